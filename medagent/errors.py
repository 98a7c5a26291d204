"""The errors medagent raises on purpose.

Every message names the file or argument at fault and what is wrong with it, so that a user can fix
the input without reading a traceback from deep inside a library.
"""

from __future__ import annotations


class MedagentError(Exception):
    """Base class of every error medagent raises on purpose."""


class DataError(MedagentError, ValueError):
    """A file or folder cannot be read, or its content is wrong (shape, values, layout)."""


class LayoutError(DataError):
    """A folder is in no known dataset layout, or its index file points to the wrong place."""


class CheckpointError(MedagentError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class ConfigError(MedagentError, ValueError):
    """An argument or config field has a value the code cannot use."""


class ToolError(MedagentError):
    """A segmentation tool was called with inputs it cannot use, or failed while running."""


class ToolUnavailable(ToolError):
    """The tool exists but cannot run here (no weights shipped, optional dependency missing)."""
