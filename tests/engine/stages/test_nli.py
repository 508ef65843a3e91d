"""The local NLI path of back-translation: a tiny transformers model built here (no download).

Skipped cleanly where transformers or torch is not installed.
"""
import importlib.util
import sys

import pytest

from engine.config import Config
from engine.records import Case, Instruction, Verifier, VerifiedInstruction
from engine.stage import Context, Funnel
from engine.stages import BackTranslateStage
from engine.stages.nli import TransformersNLI
from tests.doubles import ScriptedLLM

HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch"))
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="transformers/torch not installed")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "your", "reply", "must", "not", "contain", "commas",
         "be", "lowercase", "do", "use", "any", "in", "."]


def build_tiny_nli(path, winner: int, labels=("CONTRADICTION", "NEUTRAL", "ENTAILMENT")):
    """A 1-layer BERT classifier whose bias makes label `winner` win for every input."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(path / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                     num_labels=3, id2label=dict(enumerate(labels)),
                                     label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        bias = torch.zeros(3)
        bias[winner] = 5.0
        model.classifier.bias.copy_(bias)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@needs_transformers
def test_local_model_labels(tmp_path):
    nli = TransformersNLI(str(build_tiny_nli(tmp_path / "ent", winner=2)))
    assert nli.classify_sync("Do not use any commas.", "Your reply must not contain commas.") == "entailment"
    nli = TransformersNLI(str(build_tiny_nli(tmp_path / "con", winner=0)))
    assert nli.classify_sync("Do not use any commas.", "Your reply must be lowercase.") == "contradiction"


@needs_transformers
def test_model_with_unnamed_labels_is_refused(tmp_path):
    path = build_tiny_nli(tmp_path / "anon", winner=0, labels=("LABEL_0", "LABEL_1", "LABEL_2"))
    with pytest.raises(RuntimeError, match="expected entailment, neutral, contradiction"):
        TransformersNLI(str(path))


@needs_transformers
async def test_backtranslate_uses_local_model_from_config(tmp_path):
    path = build_tiny_nli(tmp_path / "con", winner=0)
    llm = ScriptedLLM(lambda name, prompt, n: ["Your reply must be lowercase."])
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    item = VerifiedInstruction(Instruction("Do not use any commas."),
                               ((Verifier("def evaluate(response):\n    return True\n"), 1.0),), (Case("a", True),))
    assert await BackTranslateStage.from_config(Config.from_flat(nli_model_path=str(path))).process(item, ctx) == []
    assert llm.count("backtranslate") == 1 and llm.count("nli") == 0      # the judge was the local model
    assert ctx.funnel.to_dict()["backtranslate.function"]["dropped"] == {"contradiction": 1}


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)               # import now fails
    with pytest.raises(RuntimeError, match="needs transformers and torch"):
        TransformersNLI("/nonexistent")
