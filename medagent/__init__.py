"""medagent: tool-calling agents for medical image segmentation, and the tools themselves."""

__version__ = "0.1.0"
