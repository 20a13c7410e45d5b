"""minilora.course.models: the mean-pooling sentence classifier on MiniLM, and PEFT taking it as its own."""
import copy
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertModel

import minilora as ml
from minilora.course.models import AssetsMissing, SentenceClassifier, display_path, load_encoder, mean_pool

TEXTS = ["The plot was not boring at all.", "Awful.", "Sure, the room was tiny, but the staff were wonderful."]


@pytest.fixture(scope="module")
def encoder():
    try:
        torch.manual_seed(0)
        return load_encoder(num_labels=2)
    except AssetsMissing as err:
        pytest.skip(str(err))


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    body = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    return SentenceClassifier(body, num_labels=3).eval()


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    torch.testing.assert_close(mean_pool(h, None), h.mean(1))


def test_the_classifier_is_minilm_mean_pooled_then_linear(encoder):
    model, tok = encoder
    assert isinstance(model, SentenceClassifier) and model.bert.pooler is None
    assert model.config.num_labels == 2 and model.config.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 - 384 * 384 - 384 + 384 * 2 + 2
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
        hidden = model.bert(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1)
    by_hand = model.classifier((hidden * m).sum(1) / m.sum(1))
    torch.testing.assert_close(out.logits, by_hand, atol=1e-6, rtol=0)
    with torch.no_grad():  # padding changes nothing: each text alone gives the same logits
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(alone, out.logits, atol=1e-5, rtol=0)
    labels = torch.tensor([1, 0, 1])
    loss = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(model(**batch, labels=labels).loss, loss)


def test_bad_num_labels():
    with pytest.raises(ValueError, match="num_labels must be an integer >= 2"):
        SentenceClassifier(tiny_classifier().bert, num_labels=1)
    with pytest.raises(TypeError, match="num_labels must be an integer >= 2"):
        SentenceClassifier(tiny_classifier().bert, num_labels=True)
    with pytest.raises(ValueError, match="num_labels must be an integer >= 2 or None"):
        load_encoder(num_labels=1)  # refused before anything is loaded (so even without the cached model)


def test_peft_get_peft_model_takes_it_like_a_transformers_classifier():
    base = tiny_classifier()
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    config = ml.LoRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    mine = ml.inject_lora(copy.deepcopy(base), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(copy.deepcopy(base), LoraConfig(**config.to_dict()))
    assert ml.get_nb_trainable_parameters(mine) == theirs.get_nb_trainable_parameters()
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    mine.load_state_dict({k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()})
    out = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2]))
    assert out.loss is not None and out.logits.shape == (2, 3)
    torch.testing.assert_close(mine(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:Could not find a config file")
def test_adapter_files_go_both_ways_with_peft(encoder, tmp_path):
    model, tok = encoder
    base = copy.deepcopy(model)
    ml.inject_lora(model, ml.LoRAConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                        modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ml.save_adapter(model, tmp_path / "mine")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).logits
        theirs_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "mine").eval()
        torch.testing.assert_close(theirs_model(**batch).logits, ours, atol=1e-5, rtol=0)
        theirs_model.save_pretrained(tmp_path / "peft")
        back = ml.load_adapter(copy.deepcopy(base), tmp_path / "peft")
        torch.testing.assert_close(back(**batch).logits, ours, atol=1e-5, rtol=0)
    assert (ours - base(**batch).logits).abs().max() > 1e-2  # the adapter acts


def test_display_path_hides_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    assert display_path(tmp_path / ".cache" / "minilora") == "~/.cache/minilora"
    assert display_path("/opt/kit/models") == "/opt/kit/models"
