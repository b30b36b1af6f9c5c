"""Hook specifications: how a plugin teaches convscope a new kind of model.

A plugin is a module (or object) with functions marked ``@hookimpl``. Built-in backends
and third-party ones register the same way, third parties through the entry-point group
``convscope`` in their package metadata.
"""
import pluggy

hookspec = pluggy.HookspecMarker("convscope")
hookimpl = pluggy.HookimplMarker("convscope")


@hookspec(firstresult=True)
def convscope_make_backend(model, options):
    """Return a Backend for ``model``, or None when this plugin does not handle it.

    ``options`` is the dict of keyword options given to :func:`convscope.load`. The first
    plugin that returns a Backend wins. A plugin must not import its framework only to
    say no: a model of a framework cannot exist unless that framework is imported.
    """
