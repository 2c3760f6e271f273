"""Turn a percent-format script (cells split at `# %%`, markdown at `# %% [markdown]`) into a
notebook with the course's kernel. Authoring aid: the committed .ipynb is the source of truth.

    python scripts/make_notebook.py draft.py notebooks/00_quickstart.ipynb
"""

import re
import sys

import nbformat


def convert(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "decidiff-lab", "display_name": "decidiff-lab", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for chunk in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            nb.cells.append(nbformat.v4.new_markdown_cell(re.sub(r"^# ?", "", body, flags=re.M)))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(body))
    return nb


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    nbformat.write(convert(open(source).read()), target)
