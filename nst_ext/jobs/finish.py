"""One way to finish a picture, for every command that makes one (``nst-ext stylize``, a batch's
items, the local app's jobs): its record (:mod:`nst_ext.io.provenance`), its content's colour
profile, and one atomic write, rescued to a fallback folder where the disk refuses it
(:func:`nst_ext.io.outputs.write_or_rescue`). A video's frames are work files, not pictures: the
video carries the record."""

from pathlib import Path
from typing import Sequence

from nst_ext.io.outputs import WriteError, write_or_rescue


def finish_picture(
    stylizer,
    result,
    content,
    styles: Sequence,
    output: Path,
    command: str,
    *,
    overwrite: bool = False,
    bit_depth: int = 8,
    make_folder: bool = False,
) -> None:
    """Writes `result`'s picture (the :class:`~nst_ext.stylizer.StylizeResult` of `stylizer`'s run on
    `content` and `styles`, given as that run was given them) to `output`, with the record of how it
    was made (`command`: the command that made it) and `content`'s colour profile. `overwrite`:
    replace an existing `output`; `bit_depth`: as :func:`~nst_ext.io.images.save_image`'s;
    `make_folder`: make `output`'s folder where it is missing. Raises WriteError, naming where the
    picture was saved instead, when it could not be written there."""
    from nst_ext.io import provenance
    from nst_ext.io.images import icc_profile, save_image  # torch is imported from here on

    record = provenance.make_record(
        stylizer.options,
        content,
        styles,
        result.seed,
        stylizer.weights.source,
        str(stylizer.device),
        command=command,
    )
    profile = icc_profile(content)

    def write(path: Path) -> None:
        if make_folder:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise WriteError(path, error) from None
        save_image(result.tensor, path, overwrite=overwrite, record=record, icc_profile=profile, bit_depth=bit_depth)

    write_or_rescue(write, Path(output))
