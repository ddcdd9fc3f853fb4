"""irface.engine (see DESIGN.md)."""
