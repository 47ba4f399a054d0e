"""Convert RouteLLM checkpoints into prefroute routers (``prefroute import-routellm``).

Three kinds, each read without pickle (safetensors, or ``torch.load(weights_only=True)``):

* ``mf``: RouteLLM's ``MFModel`` saved by its hub mixin (``config.json`` with ``dim``,
  ``num_models``, ``text_dim``, ``num_classes``, ``use_proj`` + ``model.safetensors``).
  ``P.weight`` -> P, ``text_proj.0.weight`` -> W, ``classifier.0.weight`` -> w, and RouteLLM's
  model-id table names P's rows. RouteLLM embeds prompts with OpenAI's
  text-embedding-3-small; the converted router records that embedder unless the caller names
  another one of the same width (the weights only make sense on the embeddings they were
  trained on).
* ``bert``: a Hugging Face sequence-classification folder with 3 labels (strong wins, tie,
  weak wins). RouteLLM's P(strong wins) is ``1 - p(tie) - p(weak wins)``, so the converted
  ``bert`` router gets ``tie_credit=0``.
* ``causal_llm``: a Hugging Face causal-LM folder, its ``system_ft_v5.txt`` and
  ``classifier_ft_v5.txt`` prompts and the score tokens ``[[1]]`` ... ``[[5]]``. Scores of
  ``score_threshold`` and above mean "the weak model is good enough"; RouteLLM's P(strong
  wins) is the probability of the other scores, renormalised over the score tokens. The
  converted ``causal_llm`` router reads that distribution at the answer position, with
  ``label_classes`` grouping the five tokens.

The result is an ordinary prefroute checkpoint, written by the router's own
``save_pretrained`` into a staged folder (``prefroute.io.staged_output_dir``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.errors import CheckpointError, ConfigError, check_choice
from prefroute.router import Router
from prefroute.routers.neural_common import HF_MODEL_DIR

# A converted neural router is saved whole under the checkpoint's HF_MODEL_DIR, which is then
# its own base model ("backbone"): a folder inside the checkpoint, as the trust policy requires.

KINDS = ("auto", "mf", "bert", "causal_llm")
ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mixtral-8x7b-instruct-v0.1"
ROUTELLM_EMBEDDER: dict[str, Any] = {
    "name": "openai", "params": {"model": "text-embedding-3-small"},
}
# RouteLLM's MF model-id table (routellm/routers/matrix_factorization/model.py): row i of P
# belongs to the i-th name.
ROUTELLM_MF_MODELS: tuple[str, ...] = (
    "RWKV-4-Raven-14B", "alpaca-13b", "chatglm-6b", "chatglm2-6b", "chatglm3-6b", "claude-1",
    "claude-2.0", "claude-2.1", "claude-instant-1", "codellama-34b-instruct",
    "deepseek-llm-67b-chat", "dolly-v2-12b", "dolphin-2.2.1-mistral-7b", "falcon-180b-chat",
    "fastchat-t5-3b", "gemini-pro", "gemini-pro-dev-api", "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-0314", "gpt-3.5-turbo-0613", "gpt-3.5-turbo-1106", "gpt-4-0125-preview",
    "gpt-4-0314", "gpt-4-0613", "gpt-4-1106-preview", "gpt4all-13b-snoozy", "guanaco-33b",
    "koala-13b", "llama-13b", "llama-2-13b-chat", "llama-2-70b-chat", "llama-2-7b-chat",
    "llama2-70b-steerlm-chat", "mistral-7b-instruct", "mistral-7b-instruct-v0.2",
    "mistral-medium", "mixtral-8x7b-instruct-v0.1", "mpt-30b-chat", "mpt-7b-chat",
    "nous-hermes-2-mixtral-8x7b-dpo", "oasst-pythia-12b", "openchat-3.5", "openchat-3.5-0106",
    "openhermes-2.5-mistral-7b", "palm-2", "pplx-70b-online", "pplx-7b-online",
    "qwen-14b-chat", "qwen1.5-4b-chat", "qwen1.5-72b-chat", "qwen1.5-7b-chat",
    "solar-10.7b-instruct-v1.0", "stablelm-tuned-alpha-7b", "starling-lm-7b-alpha",
    "stripedhyena-nous-7b", "tulu-2-dpo-70b", "vicuna-13b", "vicuna-33b", "vicuna-7b",
    "wizardlm-13b", "wizardlm-70b", "yi-34b-chat", "zephyr-7b-alpha", "zephyr-7b-beta",
)
# The one prompt format RouteLLM's causal router knows (meta-llama/Meta-Llama-3-8B); its
# PromptFormat strips each message, adds no assistant header after the user turn and leaves
# the BOS token to the tokenizer.
LLAMA3_FORMAT = {
    "system": "<|start_header_id|>system<|end_header_id|>\n\n{instruction}<|eot_id|>",
    "user": "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>",
}
SYSTEM_FILE = "system_ft_v5.txt"
CLASSIFIER_FILE = "classifier_ft_v5.txt"
SCORE_TOKENS = ("[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]")
_MF_KEYS = {"dim", "num_models", "text_dim", "num_classes", "use_proj"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SENTINEL = "\u0000ROUTELLM_QUESTION\u0000"


# sources ------------------------------------------------------------------------------
def resolve_source(src: str | Path) -> Path:
    """A local RouteLLM checkpoint folder: ``src`` itself, or a hub name downloaded (or
    found in the hub cache) through huggingface_hub; offline, a message saying what to do."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    text = str(src)
    if path.exists():
        raise ConfigError(f"{src} is a file; give the checkpoint's folder")
    if not _HUB_NAME.match(text):
        raise ConfigError(f"checkpoint folder {src} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text))
    except Exception as e:  # offline, unknown repo, no network: all end the same way
        raise ConfigError(
            f"cannot fetch the hub checkpoint {text!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}). Offline, download it on a "
            f"machine with internet access (huggingface-cli download {text} --local-dir DIR), "
            "copy DIR here, convert it with 'prefroute import-routellm DIR --out CKPT' and "
            "give CKPT (a local folder) as the router's checkpoint_path"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def detect_kind(folder: Path) -> str:
    """``mf``, ``bert`` or ``causal_llm`` from the folder's config.json."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing: {folder} is not a RouteLLM checkpoint")
    config = _read_json(config_path)
    if "prefroute_version" in config:
        raise CheckpointError(f"{folder} is already a prefroute checkpoint; load it directly")
    if _MF_KEYS <= set(config):
        return "mf"
    architectures = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in architectures:
        return "bert"
    if "ForCausalLM" in architectures:
        return "causal_llm"
    raise CheckpointError(
        f"{config_path}: neither an MF config ({sorted(_MF_KEYS)}) nor a Hugging Face "
        f"sequence-classification or causal-LM model (architectures {architectures or 'none'}); "
        "pass --kind"
    )


def read_state_dict(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of ``folder``'s weight files: safetensors first, else PyTorch files read
    with ``weights_only=True`` (never plain pickle)."""
    safetensors_files = sorted(folder.glob("*.safetensors"))
    state: dict[str, np.ndarray] = {}
    if safetensors_files:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        for file in safetensors_files:
            try:
                state.update({k: v.float().numpy() for k, v in load_file(str(file)).items()})
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
        return state
    bin_files = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    if not bin_files:
        raise CheckpointError(f"{folder} holds no *.safetensors, *.bin or *.pt weights")
    import pickle

    import torch

    for file in bin_files:
        try:
            loaded = torch.load(str(file), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError) as e:
            raise CheckpointError(
                f"{file} could not be read as plain tensors (torch.load weights_only=True: "
                f"{str(e).splitlines()[0]}); prefroute never unpickles code"
            ) from None
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{file} holds a {type(loaded).__name__}, not a state dict")
        state.update({k: v.float().numpy() for k, v in loaded.items()})
    return state


# mf -----------------------------------------------------------------------------------
def convert_mf(
    folder: Path,
    *,
    strong_model: str = ROUTELLM_STRONG,
    weak_model: str = ROUTELLM_WEAK,
    embedder: str | dict[str, Any] | None = None,
    model_names: list[str] | None = None,
) -> Router:
    """A prefroute ``mf`` router from a RouteLLM MFModel folder (threshold 0.5, uncalibrated)."""
    from prefroute.embed import build_embedder
    from prefroute.routers.mf import MFRouter

    config = _read_json(folder / "config.json")
    missing = sorted(_MF_KEYS - set(config))
    if missing:
        raise CheckpointError(f"{folder / 'config.json'} lacks the MFModel keys {missing}")
    if config["num_classes"] != 1:
        raise CheckpointError(
            f"{folder / 'config.json'}: num_classes is {config['num_classes']}; RouteLLM's "
            "win rate (and this converter) needs 1"
        )
    names = list(model_names) if model_names is not None else list(ROUTELLM_MF_MODELS)
    if len(names) != config["num_models"] or len(set(names)) != len(names):
        raise CheckpointError(
            f"{folder / 'config.json'}: num_models is {config['num_models']}, the model-id "
            f"table has {len(names)} distinct names; pass the checkpoint's own table "
            "(--model-names FILE, one name per line, in id order)"
        )
    state = read_state_dict(folder)
    expected = {"P.weight", "classifier.0.weight"} | (
        {"text_proj.0.weight"} if config["use_proj"] else set()
    )
    if set(state) != expected:
        raise CheckpointError(
            f"{folder}: the MFModel weights should be {sorted(expected)}; missing "
            f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
        )
    dim, text_dim = int(config["dim"]), int(config["text_dim"])
    spec = ROUTELLM_EMBEDDER if embedder is None else embedder
    embedder_dim = build_embedder(spec).dim
    if embedder_dim != text_dim:
        raise ConfigError(
            f"the MF checkpoint was trained on {text_dim}-d prompt embeddings; the embedder "
            f"{spec!r} gives {embedder_dim}-d ones. Name the embedder the checkpoint was trained "
            "with (--embedder; RouteLLM's own MF used OpenAI text-embedding-3-small, 1536-d)"
        )
    W = state["text_proj.0.weight"] if config["use_proj"] else np.eye(dim, dtype=np.float32)
    tensors = {"P": state["P.weight"], "W": W, "w": state["classifier.0.weight"].reshape(-1)}
    predictor = MFRouter(strong_model=strong_model, weak_model=weak_model, embedder=spec, dim=dim)
    info = {"converted_from": "routellm", "source": folder.name, "kind": "mf"}
    predictor._load_state(tensors, {"models": names, "embedder": spec, "training_info": info},
                          folder)
    predictor.embedder = predictor.embedder_.spec()
    predictor.fitted_ = True
    return Router(predictor, 0.5, training=info)


# neural helpers -------------------------------------------------------------------------
def _load_hf_model(folder: Path, auto_class: Any) -> Any:
    """A transformers model in float32 from ``folder`` (safetensors, or weights_only .bin)."""
    import torch
    from transformers import AutoConfig

    from prefroute.routers.neural_common import quiet_transformers

    try:
        with quiet_transformers():
            if any(folder.glob("*.safetensors")):
                return auto_class.from_pretrained(str(folder), dtype=torch.float32,
                                                  use_safetensors=True).eval()
            model = auto_class.from_config(AutoConfig.from_pretrained(str(folder)))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the model in {folder}: {e}") from None
    state = {k: torch.from_numpy(v) for k, v in read_state_dict(folder).items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in _tied_keys(model)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{folder}: the weights do not match the model; missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.float().eval()


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied) if not isinstance(tied, dict) else set(tied)


def _load_tokenizer(folder: Path, tokenizer: str | Path | None) -> Any:
    from transformers import AutoTokenizer

    source = str(tokenizer) if tokenizer is not None else str(folder)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot load a tokenizer from {source} ({str(e).splitlines()[0]}); RouteLLM's "
            "causal router takes its tokenizer from the base model: pass --tokenizer with a "
            "local copy of it"
        ) from None


def _attach(predictor: Any, model: Any, tokenizer: Any, info: dict[str, Any]) -> None:
    """Make a neural predictor ready to score and save, holding ``model`` as full weights."""
    predictor.tokenizer_ = tokenizer
    predictor.model_ = model.eval()
    predictor.format_ = "full"
    predictor.device_ = "cpu"
    predictor.precision_ = "no"
    predictor.training_ = info
    predictor.fitted_ = True


def _max_length(model: Any, tokenizer: Any, fallback: int) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**7]
    return min(usable) if usable else fallback


# bert ---------------------------------------------------------------------------------
def convert_bert(
    folder: Path,
    *,
    strong_model: str = ROUTELLM_STRONG,
    weak_model: str = ROUTELLM_WEAK,
    tokenizer: str | Path | None = None,
    source_name: str | None = None,
) -> Router:
    """A prefroute ``bert`` router from RouteLLM's 3-label sequence classifier folder."""
    from transformers import AutoModelForSequenceClassification

    from prefroute.routers.bert import BertRouter

    model = _load_hf_model(folder, AutoModelForSequenceClassification)
    if model.config.num_labels != 3:
        raise CheckpointError(
            f"{folder}: the classifier has {model.config.num_labels} labels; RouteLLM's BERT "
            "router has 3 (strong wins, tie, weak wins)"
        )
    tok = _load_tokenizer(folder, tokenizer)
    name = source_name or folder.name
    predictor = BertRouter(
        strong_model=strong_model, weak_model=weak_model, backbone=HF_MODEL_DIR,
        max_length=_max_length(model, tok, 512), tie_credit=0.0, device="cpu",
    )
    info = {"converted_from": "routellm", "source": name, "kind": "bert"}
    _attach(predictor, model, tok, info)
    return Router(predictor, 0.5, training=info)


# causal_llm ---------------------------------------------------------------------------
def _read_prompt_file(folder: Path, name: str, given: str | None) -> str:
    if given is not None:
        return given
    path = folder / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: RouteLLM's causal router reads its prompts from {SYSTEM_FILE} "
            f"and {CLASSIFIER_FILE} beside the weights"
        )
    return path.read_text()


def routellm_prompt_template(system_message: str, classifier_message: str) -> tuple[str, str]:
    """(text before the question, text after it) as RouteLLM's Llama-3 PromptFormat renders
    the system turn and ``classifier_message.format(question=...)`` as the user turn."""
    if classifier_message.count("{question}") != 1:
        raise CheckpointError(
            f"the classifier prompt must hold '{{question}}' once; it holds it "
            f"{classifier_message.count('{question}')} times"
        )
    user = classifier_message.format(question=_SENTINEL).strip()
    text = ""
    if system_message.strip():
        text += LLAMA3_FORMAT["system"].format(instruction=system_message.strip())
    text += LLAMA3_FORMAT["user"].format(instruction=user)
    before, after = text.split(_SENTINEL)
    return before, after


def _added_special_text(tokenizer: Any) -> tuple[str, str]:
    """The special tokens ``encode`` puts around a text (e.g. BOS), as text, so the prefix
    and suffix carry them."""
    probe = "x"
    bare = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            lead, tail = full[:start], full[start + len(bare):]
            return (
                "".join(tokenizer.convert_ids_to_tokens(lead)),
                "".join(tokenizer.convert_ids_to_tokens(tail)),
            )
    return "", ""


def convert_causal_llm(
    folder: Path,
    *,
    strong_model: str = ROUTELLM_STRONG,
    weak_model: str = ROUTELLM_WEAK,
    tokenizer: str | Path | None = None,
    system_message: str | None = None,
    classifier_message: str | None = None,
    score_threshold: int = 4,
    special_tokens: tuple[str, ...] = SCORE_TOKENS,
    source_name: str | None = None,
) -> Router:
    """A prefroute ``causal_llm`` router from RouteLLM's causal classifier folder.

    ``special_tokens`` are the score tokens in score order; scores >= ``score_threshold``
    count for the weak model (RouteLLM's defaults: ``[[1]]``..``[[5]]`` and 4).
    """
    from transformers import AutoModelForCausalLM

    from prefroute.routers.causal_llm import CausalLLMRouter
    from prefroute.routers.neural_common import STRONG, WEAK

    if not 1 < score_threshold <= len(special_tokens):
        raise ConfigError(
            f"score_threshold must be in [2, {len(special_tokens)}]. Got {score_threshold}."
        )
    system = _read_prompt_file(folder, SYSTEM_FILE, system_message)
    classifier = _read_prompt_file(folder, CLASSIFIER_FILE, classifier_message)
    before, after = routellm_prompt_template(system, classifier)
    model = _load_hf_model(folder, AutoModelForCausalLM)
    tok = _load_tokenizer(folder, tokenizer)
    missing = [t for t in special_tokens if t not in tok.get_vocab()]
    if missing:  # RouteLLM adds them to the base tokenizer at load time
        tok.add_tokens(list(missing), special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    n_rows = model.get_input_embeddings().weight.shape[0]
    if n_rows < len(tok):
        raise CheckpointError(
            f"{folder}: the model has {n_rows} token embeddings but the tokenizer with the "
            f"score tokens has {len(tok)}; wrong tokenizer? (--tokenizer)"
        )
    if n_rows > len(tok):
        logger.warning(
            "%s: the model has %d token rows, the tokenizer %d; RouteLLM's softmax also "
            "covered the %d extra rows, prefroute's covers the score tokens only",
            folder, n_rows, len(tok), n_rows - len(tok),
        )
    lead, tail = _added_special_text(tok)
    classes = [STRONG if i + 1 < score_threshold else WEAK for i in range(len(special_tokens))]
    name = source_name or folder.name
    predictor = CausalLLMRouter(
        strong_model=strong_model, weak_model=weak_model, backbone=HF_MODEL_DIR,
        max_length=_max_length(model, tok, 8192), use_chat_template=False,
        label_words=list(special_tokens), label_classes=classes, tie_credit=0.0, lora_r=0,
        device="cpu",
    )
    info = {"converted_from": "routellm", "source": name, "kind": "causal_llm",
            "score_threshold": score_threshold}
    _attach(predictor, model, tok, info)
    predictor.prompt_prefix_ = lead + before
    predictor.prompt_suffix_ = after + tail
    predictor.label_words_ = list(special_tokens)
    predictor.label_token_ids_ = [predictor._single_token(tok, w) for w in special_tokens]
    predictor._prepare()
    return Router(predictor, 0.5, training=info)


# entry points -------------------------------------------------------------------------
def convert_routellm(src: str | Path, *, kind: str = "auto", **options: Any) -> Router:
    """A prefroute Router from a RouteLLM checkpoint folder or hub name (see the module doc).

    ``options`` go to ``convert_mf`` / ``convert_bert`` / ``convert_causal_llm``.
    """
    check_choice("kind", "convert_routellm", kind, KINDS)
    folder = resolve_source(src)
    if kind == "auto":
        kind = detect_kind(folder)
    if kind != "mf":
        options.setdefault("source_name", str(src) if _HUB_NAME.match(str(src)) else folder.name)
    converters = {"mf": convert_mf, "bert": convert_bert, "causal_llm": convert_causal_llm}
    try:
        router = converters[kind](folder, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for a RouteLLM {kind} checkpoint: {e}") from None
    logger.info("converted RouteLLM %s checkpoint %s into %s", kind, src, router)
    return router


def import_routellm(
    src: str | Path, out: str | Path, *, overwrite: bool = False, threshold: float = 0.5,
    **options: Any,
) -> Path:
    """Convert ``src`` and write the prefroute checkpoint to ``out`` (atomically)."""
    from prefroute.io import check_output_dir, staged_output_dir

    local = Path(src).expanduser()
    inputs = [local] if local.exists() else []
    check_output_dir(out, overwrite=overwrite, inputs=inputs)  # before any heavy work
    router = convert_routellm(src, **options)
    router.threshold = float(threshold)
    with staged_output_dir(out, overwrite=overwrite, inputs=inputs) as stage:
        router.save_pretrained(stage)
    return Path(out)


def default_cache_dir(src: str) -> Path:
    """Where a hub checkpoint converted for the compat Controller is kept."""
    from prefroute.routers.backbones import cache_root

    return cache_root() / "routellm" / src.replace("/", "--")


def is_hub_name(src: str | Path) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    return bool(_HUB_NAME.match(str(src))) and not os.path.exists(str(src))
