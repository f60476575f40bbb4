import torch

import nst_ext


def pytest_addoption(parser):
    parser.addoption("--sizes", default="256,512,1024", help="image sizes in pixels, comma-separated")
    parser.addoption("--batches", default="1,4", help="batch sizes, comma-separated")
    parser.addoption("--step-sizes", default="256,512", help="image sizes of the stylization-step benchmark")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


def pytest_configure(config):
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
