// Points the widget machinery at files this site serves itself. No CDN is involved.
//
// myst-nb adds three scripts, in this order, to every page that holds widget state (see
// `nb_ipywidgets_js` in _config.yml): _vendor/require.js, this file, and html-manager's
// _vendor/@jupyter-widgets/html-manager/dist/embed-amd.js. book/offline/assemble.py copies this file to
// _vendor/widgets-config.js. Its folder is therefore the vendor folder. We compute that folder from
// the script's own URL, so the URLs below are absolute and correct from any page, nested or not
// (notebooks/01_sequence_problem.html as well as index.html), and under any site prefix
// (GitHub Pages serves the book below /<repository>/).
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !window.requirejs) {
    throw new Error("widgets-config.js must be loaded, synchronously, after require.js");
  }
  var vendor = new URL("./", script.src).href;

  // embed-amd.js defines these modules itself. Each webpack bundle in it takes the folder of its
  // module's URL (RequireJS's `module.uri`) as the place to fetch its assets from. These are the
  // Font Awesome fonts in html-manager's CSS. With baseUrl alone, "@jupyter-widgets/html-manager"
  // would be `<vendor>/@jupyter-widgets/html-manager.js`, and its fonts would be looked up in
  // `<vendor>/@jupyter-widgets/` (404). So each module is mapped to the file that really holds it.
  var dist = vendor + "@jupyter-widgets/html-manager/dist/";
  var paths = {
    // anywidget's AMD front end, shipped by the anywidget pip package that wrote the widget
    // state (anywidget/nbextension/index.js), so the versions match.
    anywidget: vendor + "anywidget/index",
    // "@jupyter-widgets/html-manager/dist/libembed-amd" and the like: their own folder.
    "@jupyter-widgets/html-manager/dist": dist.slice(0, -1),
  };
  ["base", "controls", "base7", "controls7", "html-manager"].forEach(function (name) {
    paths["@jupyter-widgets/" + name] = dist + "embed-amd";
  });

  // html-manager reads this, but only after its CSS has been built, so the paths above are what
  // make its fonts load. It is set all the same, for assets fetched later.
  window.__jupyter_widgets_assets_path__ = dist;

  window.requirejs.config({
    // A module name with no path resolves inside the vendor folder, never against the page.
    // embed-amd.js's CDN fallback, `data-jupyter-widgets-cdn="npm/"`, is relative to this
    // baseUrl. So a widget whose front end this site does not ship fails here, on-site (404),
    // and nothing goes to a CDN.
    baseUrl: vendor,
    paths: paths,
  });
})();
