"""Pages: circuit layout and pictures (SVG, HTML, PNG), feature dashboards, the circuit report
and figures. Their CSS and JavaScript (``assets/``) and jinja2 templates (``templates/``) are
package files, loaded by ``templating``."""
