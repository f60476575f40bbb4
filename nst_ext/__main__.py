import sys

from nst_ext.cli import main

sys.exit(main())
