"""README's commands work as written (issue 21): what a plot reads was made by a README command; data paths exist."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _commands():
    readme = (ROOT / "README.md").read_text()
    text = "\n".join(re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith("jaxqfl ")]


def test_every_plotted_run_folder_is_made_by_a_readme_command():
    made = {w[w.index("--out") + 1] for w in map(str.split, _commands()) if w[1] == "run" and "--out" in w}
    for cmd in _commands():
        words = cmd.split()
        if words[1] == "plot":
            runs = [w for w in words[2:words.index("--out")] if not w.startswith("-")]
            missing = [r for r in runs if r not in made]
            assert not missing, f"`{cmd}` plots {missing}, which no README command writes"


def test_readme_data_paths_name_the_shared_files():
    for cmd in _commands():
        words = cmd.split()
        if "--data-path" in words and "--dataset" in words and words[words.index("--dataset") + 1] == "mnist":
            path = words[words.index("--data-path") + 1]
            assert (ROOT / path).is_file() or path.startswith("../shared/data/"), f"`{cmd}`: {path} is not the data"
            assert path == "../shared/data/mnist/mnist.npz", f"`{cmd}` reads {path}"
