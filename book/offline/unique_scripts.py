"""A Sphinx extension that writes each of a page's scripts once.

Sphinx 7.4 writes a page's inline script twice when an extension adds it with
``app.add_js_file(None, body=...)`` after the builder has started. The builder keeps that copy
under the file name ``None``. ``prepare_writing`` then adds the registry's copy under ``''``, and
the two do not compare equal. sphinx-thebe adds ``const THEBE_JS_URL = ...`` this way, on every
page. Declared twice, it is a page error ("Identifier 'THEBE_JS_URL' has already been declared")
on every page of the site. This extension drops the second copy of any script just before the
page is written. The test of the site (tests/test_site.py) fails on page errors, so it notices
if the problem comes back.

_config.yml loads it with ``sphinx: local_extensions: {unique_scripts: book/offline}``.
"""

from __future__ import annotations


def _drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        filename = getattr(script, "filename", script) or ""
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (filename, getattr(script, "priority", None), attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: Sphinx restores the builder's list after each page


def setup(app):
    # After every other handler has added its per-page scripts (myst-nb's widget scripts too).
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
