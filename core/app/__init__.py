"""The application on top of the library: the ``convscope`` command, ``convscope bench``
and the HTML report. Nothing in the library imports this package."""
