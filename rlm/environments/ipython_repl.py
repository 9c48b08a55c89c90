"""The reference's (alexzhang13/rlm) module path for the IPython environment.

``from rlm.environments.ipython_repl import IPythonREPL`` keeps working; the class lives in
`rlm.environments.ipython` and is the one ``environment="ipython"`` builds.
"""

from rlm.environments.ipython import IPythonREPL, KernelMode

__all__ = ["IPythonREPL", "KernelMode"]
