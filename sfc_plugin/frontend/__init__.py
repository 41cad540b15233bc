"""Pages: circuit layout and pictures (SVG, HTML, PNG), feature dashboards and figures."""
