"""The plumbing of the SmolVLM-on-CPU notebook series; the notebooks show the library calls that matter.

One module per concern (``from helpers import chat``); what only notebook 05 needs lives in ``helpers.deep``.
"""

from helpers import quiet

quiet.install()


def show_code(function):
    """Display the source of ``function`` in the notebook: what a helper does, instead of a second copy of it."""
    import inspect

    from IPython.display import Code, display

    display(Code(inspect.getsource(function), language="python"))
