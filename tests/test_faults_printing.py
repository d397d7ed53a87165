"""Error printing that cannot crash (issue 28, item 7): square brackets in any user string are
text, never rich markup; the one ``error:`` line holds the string as typed; a default name the
user never typed (``RUN-refined``) that is too long says so and which option to give.

Every case runs the real `cci` app in this process (:func:`faults.invoke`) on one small real
store and lands in the fault tally (:mod:`tests.faults`)."""
from __future__ import annotations

import faults
import pytest

from cci_core.cluster.cluster_run import ClusterParams

LONG_RUN = "r" * 125  # valid (128 characters at most); "<it>-refined" is not


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("faults-printing", corpus="d28", **{LONG_RUN: ClusterParams(k=3, n_components=10)})


@pytest.fixture(scope="module")
def bracket_source(tmp_path_factory):
    """A folder named with markup holding one good image and one unreadable file, also named with markup."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("src") / "src[bold]dir"
    folder.mkdir()
    Image.new("L", (28, 28), 200).save(folder / "good[red].png")
    (folder / "bad[link=x].png").write_bytes(b"not an image")
    return folder


# (case id, the typed string, the command with {S} for the store and {X} for that string)
CASES = [
    ("printing: missing source with [/]", "/x/no[/]dir", ["ingest", "{X}", "--corpus", "c", "--store", "{S}"]),
    ("printing: missing source with [bold]", "/x/no[bold]dir", ["ingest", "{X}", "--corpus", "c", "--store", "{S}"]),
    ("printing: corpus name with [bold]", "c[bold]x", ["ingest", "builtin:digits", "--corpus", "{X}", "--store", "{S}"]),
    ("printing: --size with [/]", "2[/]x", ["ingest", "builtin:digits", "--corpus", "c", "--size", "{X}",
                                            "--store", "{S}"]),
    ("printing: corpus info [/]", "a[/]b", ["corpus", "info", "{X}", "--store", "{S}"]),
    ("printing: cluster [link=x]", "x[link=x]y", ["cluster", "{X}", "--store", "{S}"]),
    ("printing: refine [red]", "r[red]x[/red]", ["refine", "{X}", "--store", "{S}"]),
    ("printing: predict [/]", "run[/]", ["predict", "{X}", "builtin:digits", "--store", "{S}"]),
    ("printing: datasets show [bold]", "[bold]g", ["datasets", "show", "{X}", "--store", "{S}"]),
    ("printing: lineage show [/]", "[/]zz", ["lineage", "show", "{X}", "--store", "{S}"]),
    ("printing: lineage list --kind [/]", "k[/]", ["lineage", "list", "--kind", "{X}", "--store", "{S}"]),
    ("printing: --store [bold]", "/x/[bold]store[/]", ["corpus", "list", "--store", "{X}"]),
    ("printing: --set [/]", "lam[/]", ["refine", LONG_RUN, "--set", "{X}", "--store", "{S}"]),
]


@pytest.mark.parametrize("case_id, typed, argv", CASES, ids=[c[0] for c in CASES])
def test_user_strings_print_literally(store, case_id, typed, argv):
    before = faults.snapshot(store.root)
    ran = faults.invoke(*(a.replace("{S}", str(store.root)).replace("{X}", typed) for a in argv))
    faults.check(case_id, ran, before, store.root, fragments=[typed])


def test_results_print_names_literally(store, bracket_source):
    """What a command prints on success names the folder and the quarantined file as they are."""
    from cci_core.ingest.ingest import ingest_local
    ingest_local(store, str(bracket_source), "q", size=(28, 28))
    before = faults.snapshot(store.root)
    ran = faults.invoke("corpus", "info", "q", "--store", str(store.root))
    faults.check("printing: corpus info shows [bold] source and [link=x] file", ran, before, store.root,
                 expect="correct result", correct=lambda r: "src[bold]dir" in r.stdout and "bad[link=x].png" in r.stdout)
    ran = faults.invoke("predict", LONG_RUN, str(bracket_source), "--store", str(store.root))
    faults.check("printing: predict quarantines [link=x] file", ran, before, store.root, expect="correct result",
                 correct=lambda r: "bad[link=x].png" in r.stderr and "1 images labelled" in r.stdout)


def test_derived_run_id_too_long_says_so(store):
    """`cci refine` of a 125-character run id: the default new id RUN-refined (133 characters) is
    the one refused, and the line says it was made from RUN and to give --run-id."""
    before = faults.snapshot(store.root)
    ran = faults.invoke("refine", LONG_RUN, "--store", str(store.root))
    faults.check("printing: derived RUN-refined too long", ran, before, store.root,
                 fragments=[f"{LONG_RUN}-refined", "made from", "--run-id"])


def test_pipeline_run_ids_too_long_say_so(store):
    """`cci run` with a 110-character corpus: its derived run ids would pass 128 characters after the
    ingest; refused first, naming --corpus and the longest name that works."""
    before = faults.snapshot(store.root)
    ran = faults.invoke("run", "builtin:digits", "--corpus", "c" * 110, "--store", str(store.root))
    faults.check("printing: derived pipeline run ids too long", ran, before, store.root,
                 fragments=["c" * 110, "--corpus", "at most 103 characters"])
