"""What `decoder auto` picks (data/build.py): nvJPEG on CUDA where it decodes, else the host."""

import torch

from shufflenet_trainer.data.build import auto_decoder, nvjpeg_works


def test_auto_prefers_nvjpeg_only_where_it_decodes() -> None:
    assert auto_decoder(on_cuda=True, nvjpeg_works=True, simplejpeg=True) == "gpu-nvjpeg"
    # A CUDA device whose torchvision cannot decode there: the host path, as before.
    assert auto_decoder(on_cuda=True, nvjpeg_works=False, simplejpeg=True) == "sj-jpeg"
    assert auto_decoder(on_cuda=True, nvjpeg_works=False, simplejpeg=False) == "tv-jpeg"
    assert auto_decoder(on_cuda=False, nvjpeg_works=True, simplejpeg=False) == "tv-jpeg"


def test_the_probe_decodes_a_real_jpeg() -> None:
    # The same probe the CUDA path runs: the host decoder always works; CUDA decodes where
    # a CUDA device is (this test fails on a GPU machine whose nvJPEG is broken), and where
    # there is none the probe's failure is an answer (False), not a crash.
    assert nvjpeg_works("cpu")
    assert nvjpeg_works("cuda") == torch.cuda.is_available()
