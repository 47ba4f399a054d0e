"""`prefroute import-routellm`: checkpoints built and saved by the routellm package itself
(small random weights) convert into prefroute routers that give RouteLLM's win rates.

RouteLLM's classes run here unchanged except where they cannot on this machine: its MF
model calls OpenAI's embedding API, which a real local server (tests/embedding_server.py)
answers with wordllama vectors, and its causal classifier moves tensors to "cuda", which the
test maps to the CPU.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OPENAI_API_KEY", "sk-test-unused")  # routellm builds a client on import
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("routellm")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from prefroute.cli.main import app  # noqa: E402
from prefroute.compat.routellm_import import (  # noqa: E402
    ROUTELLM_MF_MODELS,
    convert_routellm,
    import_routellm,
)
from prefroute.errors import CheckpointError, ConfigError  # noqa: E402
from prefroute.router import load_router  # noqa: E402
from tests.embedding_server import EmbeddingServer  # noqa: E402
from tests.upstream_server import ServerThread  # noqa: E402

TOL = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # routellm's pydantic v1


@pytest.fixture(scope="module")
def prompts(data_dir) -> list[str]:
    """Distinct real AlpacaEval instructions, stripped, of mixed lengths."""
    seen: list[str] = []
    with open(data_dir / "alpaca_eval" / "judge_battles.jsonl", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["prompt"].strip()
            if text and text not in seen and len(text) < 600:
                seen.append(text)
            if len(seen) == 40:
                break
    return seen


@pytest.fixture(scope="module")
def wordllama():
    from prefroute.embed import build_embedder

    return build_embedder("wordllama")


# mf -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routellm_mf(tmp_path_factory):
    from routellm.routers.matrix_factorization.model import MODEL_IDS, MFModel

    assert list(MODEL_IDS) == list(ROUTELLM_MF_MODELS)  # our id table is RouteLLM's
    torch.manual_seed(0)
    model = MFModel(dim=16, num_models=len(MODEL_IDS), text_dim=256, num_classes=1,
                    use_proj=True)
    with torch.no_grad():  # spread the win rates (the default init keeps them near 0.5)
        model.text_proj[0].weight.mul_(100.0)
    folder = tmp_path_factory.mktemp("routellm") / "mf"
    model.save_pretrained(folder)
    return folder, model.eval()


def test_mf_conversion_gives_routellm_win_rates(routellm_mf, prompts, wordllama, tmp_path,
                                                monkeypatch):
    import openai
    from routellm.routers.matrix_factorization import model as mf_module
    from routellm.routers.matrix_factorization.model import MODEL_IDS

    folder, model = routellm_mf
    out = import_routellm(folder, tmp_path / "mf", embedder="wordllama")
    router = load_router(out)
    assert router.router_type == "mf" and router.threshold == 0.5
    ours = router.strong_win_prob(prompts)
    ours_other_pair = router.predictor.pair_proba(prompts, "claude-2.1", "vicuna-13b")

    with ServerThread(EmbeddingServer(wordllama).app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        monkeypatch.setattr(mf_module, "OPENAI_CLIENT", client)
        theirs = np.array([
            model.pred_win_rate(MODEL_IDS["gpt-4-1106-preview"],
                                MODEL_IDS["mixtral-8x7b-instruct-v0.1"], p) for p in prompts
        ])
        theirs_other = np.array([
            model.pred_win_rate(MODEL_IDS["claude-2.1"], MODEL_IDS["vicuna-13b"], p)
            for p in prompts[:10]
        ])
        client.close()
    assert theirs.std() > 0.01  # the weights route prompts differently
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    np.testing.assert_allclose(ours_other_pair[:10], theirs_other, atol=TOL, rtol=0)


def test_mf_embedder_must_match(routellm_mf):
    folder, _ = routellm_mf
    with pytest.raises(ConfigError, match="256-d prompt embeddings.*1536-d"):
        convert_routellm(folder)  # RouteLLM's default embedder is text-embedding-3-small


def test_mf_pytorch_weights_load_without_pickle(routellm_mf, prompts, tmp_path):
    folder, model = routellm_mf
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    a = convert_routellm(folder, embedder="wordllama").strong_win_prob(prompts[:5])
    b = convert_routellm(legacy, embedder="wordllama").strong_win_prob(prompts[:5])
    np.testing.assert_array_equal(a, b)

    class Payload:  # a pickle that would run code if unpickled
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (legacy / "pytorch_model.bin").write_bytes(pickle.dumps({"P.weight": Payload()}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_routellm(legacy, embedder="wordllama")


def test_hub_name_offline_says_how_to_use_a_local_checkpoint(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        convert_routellm("routellm/mf_gpt4_augmented-not-cached")
    message = str(info.value)
    assert "huggingface-cli download" in message and "import-routellm DIR" in message
    assert "checkpoint_path" in message


def test_cli_import_and_errors(routellm_mf, tmp_path):
    folder, _ = routellm_mf
    runner = CliRunner()
    out = tmp_path / "cli_mf"
    result = runner.invoke(app, ["import-routellm", str(folder), "--out", str(out),
                                 "--embedder", "wordllama", "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    assert load_router(out).threshold == 0.4
    config = json.loads((out / "config.json").read_text())
    assert config["type"] == "mf" and config["state"]["models"][24] == "gpt-4-1106-preview"
    # a second run refuses to replace the folder it did not ask to overwrite
    again = runner.invoke(app, ["import-routellm", str(folder), "--out", str(out),
                                "--embedder", "wordllama"])
    assert again.exit_code != 0 and isinstance(again.exception, Exception)
    assert "--overwrite" in str(again.exception)
    missing = runner.invoke(app, ["import-routellm", str(tmp_path / "nope"), "--out",
                                  str(tmp_path / "x")])
    assert "does not exist" in str(missing.exception)
    assert not (tmp_path / "x").exists()


# bert ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routellm_bert(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from prefroute.embed.minilm import bundled_minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        max_position_embeddings=512,
                        initializer_range=1.0)  # large weights: the prompts' scores spread
    model = BertForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("routellm") / "bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_bert_conversion_gives_routellm_win_rates(routellm_bert, prompts, tmp_path):
    from routellm.routers.routers import BERTRouter

    theirs_router = BERTRouter(checkpoint_path=str(routellm_bert))
    theirs = np.array([theirs_router.calculate_strong_win_rate(p) for p in prompts[:20]])
    out = import_routellm(routellm_bert, tmp_path / "bert")
    router = load_router(out)
    assert router.router_type == "bert" and router.predictor.tie_credit == 0.0
    batched = router.strong_win_prob(prompts[:20])
    router.predictor.predict_batch_size = 1  # one prompt per pass, as RouteLLM scores
    ours = router.strong_win_prob(prompts[:20])
    assert theirs.std() > 0.01
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    # padded batches change float32 summation order only
    np.testing.assert_allclose(batched, theirs, atol=1e-5, rtol=0)
    # the compat Controller converts a RouteLLM folder named in its config on load
    from prefroute.compat.routellm import Controller

    client = Controller(["bert"], "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1",
                        config={"bert": {"checkpoint_path": str(routellm_bert)}})
    np.testing.assert_allclose(client.batch_calculate_win_rate(prompts[:20], "bert"), theirs,
                               atol=1e-5, rtol=0)


# causal_llm ---------------------------------------------------------------------------
SYSTEM = "You are a routing assistant. Judge how well a small model would answer."
CLASSIFIER = ("[Instruction]\nRate from 1 to 5 how well a small model would answer.\n"
              "[Question]\n{question}\n[End of question]\nScore:")


@pytest.fixture(scope="module")
def routellm_causal(tmp_path_factory, prompts):
    """A base tokenizer (byte-level BPE trained here, BOS added like Llama 3's) and a tiny
    Llama whose vocabulary holds RouteLLM's five score tokens after it."""
    from routellm.routers.causal_llm.llm_utils import get_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("routellm")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(prompts * 3 + [SYSTEM, CLASSIFIER], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    base = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    base_dir = root / "base_tokenizer"
    base.save_pretrained(base_dir)

    scored = get_tokenizer(str(base_dir), special_tokens=["[[1]]", "[[2]]", "[[3]]", "[[4]]",
                                                          "[[5]]"])
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(scored), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
                         initializer_range=1.0)  # large weights: the prompts' scores spread
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # make the score tokens the likely first answer, as after training
        model.lm_head.weight[: len(scored) - 5] = 0.0
    folder = root / "causal"
    model.save_pretrained(folder)
    (folder / "system_ft_v5.txt").write_text(SYSTEM)
    (folder / "classifier_ft_v5.txt").write_text(CLASSIFIER)
    return folder, base_dir


def _routellm_causal_router(folder: Path, tokenizer_dir: Path):
    """RouteLLM's CausalLLMRouter and classifier around the same weights (fp32, CPU): their
    constructors download from the hub and move the model to CUDA, so the attributes their
    methods read are set here instead."""
    import functools

    from routellm.routers.causal_llm.llm_utils import (
        get_tokenizer,
        load_prompt_format,
        to_openai_api_messages,
    )
    from routellm.routers.causal_llm.model import CausalLLMClassifier
    from routellm.routers.routers import CausalLLMRouter
    from transformers import AutoModelForCausalLM

    tokens = ["[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]"]
    classifier = CausalLLMClassifier.__new__(CausalLLMClassifier)
    classifier.model = AutoModelForCausalLM.from_pretrained(str(folder),
                                                            dtype=torch.float32).eval()
    classifier.prompt_format = load_prompt_format("meta-llama/Meta-Llama-3-8B")
    classifier.use_last_turn = True
    classifier.prompt_field = "messages"
    classifier.additinal_fields = []
    classifier.tokenizer = get_tokenizer(str(tokenizer_dir), special_tokens=tokens)
    classifier.orig_vocab_size = len(classifier.tokenizer) - len(tokens)
    classifier.max_new_tokens = 6
    classifier.score_threshold = 4
    router = CausalLLMRouter.__new__(CausalLLMRouter)
    router.router_model = classifier
    router.to_openai_messages = functools.partial(
        to_openai_api_messages, (folder / "system_ft_v5.txt").read_text(),
        (folder / "classifier_ft_v5.txt").read_text())
    return router


@pytest.mark.slow
def test_causal_llm_conversion_gives_routellm_win_rates(routellm_causal, prompts, tmp_path,
                                                         monkeypatch):
    folder, tokenizer_dir = routellm_causal
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):  # RouteLLM hard-codes .to("cuda")
        args = tuple("cpu" if isinstance(a, str) and a == "cuda" else a for a in args)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to_cpu)
    theirs_router = _routellm_causal_router(folder, tokenizer_dir)
    sample = prompts[:10]
    theirs, first_token_is_score = [], []
    for prompt in sample:
        row = theirs_router.router_model({"messages": theirs_router.to_openai_messages([prompt])})
        first_token_is_score.append(
            row is not None
            and int(row["output_ids"][0]) >= theirs_router.router_model.orig_vocab_size)
        theirs.append(theirs_router.calculate_strong_win_rate(prompt))
    monkeypatch.undo()

    out = import_routellm(folder, tmp_path / "causal", tokenizer=tokenizer_dir)
    router = load_router(out)
    assert router.router_type == "causal_llm"
    assert router.predictor.label_classes == [0, 0, 0, 2, 2]
    ours = router.strong_win_prob(sample)
    # RouteLLM reads the score where the model first generates a score token; prefroute at
    # the first answer position. They are the same position whenever the first generated
    # token is a score token (the trained model's behaviour); compare there.
    same_position = np.array(first_token_is_score)
    assert same_position.sum() >= len(sample) // 2
    theirs = np.array(theirs)
    assert theirs[same_position].std() > 0.01
    np.testing.assert_allclose(ours[same_position], theirs[same_position], atol=TOL, rtol=0)


def test_causal_llm_needs_its_prompt_files(routellm_causal, tmp_path):
    folder, tokenizer_dir = routellm_causal
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in folder.iterdir():
        if not f.name.endswith(".txt"):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="system_ft_v5.txt"):
        convert_routellm(bare, tokenizer=tokenizer_dir)
