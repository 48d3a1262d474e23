"""Small Sphinx fixes of the book's HTML (a local extension, loaded by ``_config.yml``).

Jupyter Book 1's stack (sphinx-thebe 0.3.1 under sphinx-book-theme 1.3) adds the inline script
``const THEBE_JS_URL = ...`` to every page twice; the second copy throws "Identifier
'THEBE_JS_URL' has already been declared" in every reader's console. Each page keeps one copy of
every script here. The book does not use Thebe (``launch_buttons.thebe: false``); its inline
configuration names a URL but fetches nothing.
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        # the same inline script comes once with filename None and once with '' (registry, builder)
        filename = script if isinstance(script, str) else (getattr(script, "filename", None) or "")
        key = (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

