// The API reference at /api/: Swagger UI (our own static copy) rendering /openapi.json.
// The site's Content-Security-Policy allows nothing from another origin, and the page
// asks for nothing from one: no online validator badge, no fonts, no CDN.
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) return;
  window.SwaggerUIBundle({
    url: root.dataset.url,
    domNode: root,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    // Never ask validator.swagger.io for a badge (the default, in layouts that show one).
    validatorUrl: null,
  });
})();
