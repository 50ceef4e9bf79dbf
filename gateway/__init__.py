"""An API gateway that internal teams put in front of Crazyrouter."""

__version__ = "0.1.0"
