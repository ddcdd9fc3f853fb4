"""irface.eval (see DESIGN.md)."""
