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
