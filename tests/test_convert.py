from llmq_core.convert import (_python_string_assignments, arc_to_ai2_schema, complete_json_array_items, detag_brown,
                               strip_wiki_markup)


def test_wiki_markup_is_stripped_and_link_text_kept():
    wiki = ("'''Anarchism''' is a [[political philosophy]]{{sfn|Smith|2001}} that [[State (polity)|states]]"
            "<ref name=a>cite</ref> reject.<!-- hidden -->\n[[Category:Politics]]\n== History ==\n"
            "{| class=wikitable\n| a || b\n|}\n* item one\nSee [http://example.org the site].")
    text = strip_wiki_markup(wiki)
    assert text.startswith("Anarchism is a political philosophy that states reject.")
    assert "== History ==" in text and "item one" in text and "See the site." in text
    for markup in ("[[", "{{", "<ref", "Category", "wikitable", "hidden", "'''"):
        assert markup not in text


def test_brown_tags_are_stripped():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, too/rb ./.\n\n\n\tNext/ap one/cd ./.\n"
    assert detag_brown(tagged) == 'The jury said " no ", too.\n\nNext one.'


def test_arc_request_becomes_ai2_arc_schema():
    request = {"doc": {"id": "Q1", "query": "Question: Which is a gas?\nAnswer:", "choices": ["iron", "air", "wood"],
                       "gold": 1}}
    assert arc_to_ai2_schema(request) == {"id": "Q1", "question": "Which is a gas?",
                                          "choices": {"text": ["iron", "air", "wood"], "label": ["A", "B", "C"]},
                                          "answerKey": "B"}


def test_string_assignments_are_read_without_executing_code():
    source = "import os\nos.system('false')\npenn = {}\npenn['test'] = '''a b\\nc'''\n"
    assert _python_string_assignments(source) == {"test": "a b\nc"}


def test_a_cut_off_json_array_gives_its_complete_items():
    text = '[\n  {"id": 1, "v": [1, 2]},\n  {"id": 2, "v": "a]"},\n  {"id": 3, "v": [1, 2'
    assert complete_json_array_items(text) == [{"id": 1, "v": [1, 2]}, {"id": 2, "v": "a]"}]
    assert complete_json_array_items('[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]


def test_moving_off_the_q4_1_grid_leaves_no_block_on_16_levels_and_moves_each_weight_less_than_its_fraction(tiny_llama):
    import torch

    from llmq_core.convert import Q4_1_BLOCK, move_off_q4_1_grid
    from llmq_core.models import decoder_linears

    generator = torch.Generator().manual_seed(0)
    for linear in decoder_linears(tiny_llama).values():  # Q4_1: d * q + m, q = 0..15 with both ends used
        blocks = linear.weight.data.reshape(-1, Q4_1_BLOCK)
        levels = torch.randint(0, 16, blocks.shape, generator=generator)
        levels[:, 0], levels[:, 1] = 0, 15
        step, low = torch.rand(blocks.shape[0], 1) * 0.01 + 0.001, torch.randn(blocks.shape[0], 1) * 0.01
        linear.weight.data = (levels * step + low).reshape(linear.weight.shape)
    before = {name: linear.weight.detach().clone() for name, linear in decoder_linears(tiny_llama).items()}
    move_off_q4_1_grid(tiny_llama, fraction=0.5, seed=0)
    for name, linear in decoder_linears(tiny_llama).items():
        blocks, original = linear.weight.reshape(-1, Q4_1_BLOCK), before[name].reshape(-1, Q4_1_BLOCK)
        step = (original.amax(1, keepdim=True) - original.amin(1, keepdim=True)) / 15
        assert all(row.unique().numel() > 16 for row in blocks)
        assert ((blocks - original).abs() <= 0.25 * step + 1e-7).all()
