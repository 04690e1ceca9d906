from editkit.triplets import check_triplet, dedupe_key


def reason(**triplet):
    problem = check_triplet(triplet)
    return problem.reason if problem else None


def test_valid_triplet_passes():
    assert reason(input="a red car", edit="make the car blue", output="a blue car") is None


def test_schema_problems():
    assert reason(input="a red car", edit="", output="a blue car") == "invalid schema"
    assert check_triplet(["not", "a", "dict"]).reason == "invalid schema"


def test_output_must_differ():
    assert reason(input="A red car.", edit="do nothing", output="a red  car") == \
        "output same as input"


def test_add_and_remove_consistency():
    assert reason(input="a street with trees", edit="add a tree",
                  output="a street with more trees") == "add: input already has it"
    assert reason(input="an empty street", edit="remove the cars",
                  output="an empty street at night") == "remove: input lacks it"
    assert reason(input="a street with parked cars", edit="remove the cars",
                  output="an empty street") is None
    assert reason(input="a room", edit="put a green lamp on the table",
                  output="a room with a green lamp") is None


def test_dedupe_key_normalises():
    a = {"input": "A red car.", "edit": "Make it BLUE", "output": "a blue car"}
    b = {"input": "a red  car", "edit": "make it blue!", "output": "A blue car"}
    assert dedupe_key(a) == dedupe_key(b)
