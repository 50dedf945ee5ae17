"""Sphinx configuration of the astromix documentation.

Builds offline: no intersphinx inventories are fetched (the build machines have
no internet access), so references to numpy/astropy objects are plain text.
"""

import datetime
import os
import warnings

import astromix

os.environ.setdefault("MPLBACKEND", "Agg")

project = "astromix"
author = "astromix developers"
copyright = f"2026-{max(2026, datetime.date.today().year)}, {author}"
release = astromix.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
    "sphinx_gallery.gen_gallery",
    "pytest_doctestplus.sphinx.doctestplus",  # the doctest-requires directive
]

templates_path = []
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "sg_execution_times.rst"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "obj"
nitpicky = False

# No intersphinx: the documentation must build without network access.
intersphinx_mapping = {}

# automodapi writes its stub pages to docs/api/ (ignored by git).
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "reference_url": {},
    "write_computation_times": False,
}

html_theme = "pydata_sphinx_theme"
html_title = f"astromix {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []
html_show_sourcelink = False

# A non-GUI matplotlib backend warns when an example calls plt.show(); that is expected.
warnings.filterwarnings("ignore", message="FigureCanvasAgg is non-interactive",
                        category=UserWarning)
