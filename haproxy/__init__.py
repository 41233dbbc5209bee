"""The Jinja2 templates of the HAProxy config; installed as ``lb.templates``."""
