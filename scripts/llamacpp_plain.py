"""llama.cpp (llama-cpp-python) with plain CPU weight buffers, for the scripts that run it beside rill.

llama.cpp's AMX matmul path crashes on some of this project's machines (a Xeon with AMX), so every model these
scripts load sets `use_extra_bufts = False`. Import this module and call `disable_extra_bufts()` before loading.
"""


def disable_extra_bufts():
    """Make every model load with use_extra_bufts = False; calling it again changes nothing."""
    import llama_cpp.llama_cpp as L
    orig = L.llama_model_default_params
    if getattr(orig, "_rill_patched", False):
        return

    def patched():
        p = orig()
        p.use_extra_bufts = False
        return p

    patched._rill_patched = True
    L.llama_model_default_params = patched
