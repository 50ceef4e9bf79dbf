// Starts Swagger UI on /docs. A file of its own rather than an inline script, so the page runs
// under a Content-Security-Policy that admits only the gateway's own scripts.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json", // relative to /docs, so a path prefix in front of the gateway works
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // never send the document to an outside validator
    persistAuthorization: false, // a pasted token stays out of localStorage
  });
});
