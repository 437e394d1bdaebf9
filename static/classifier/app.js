// The upload page without reloads: choose (picker, drop, paste), preview, classify.
// Without this script the form still posts and the server renders the results.
(function () {
  "use strict";
  const form = document.getElementById("classify-form");
  if (!form || !window.fetch || !window.FormData) return;
  const input = document.getElementById("image");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const results = document.getElementById("results");
  const button = form.querySelector("button[type=submit]");
  const maxBytes = Number(form.dataset.maxBytes);
  const accepted = form.dataset.accept.split(",");
  // With API keys set the page has a key field: the key goes in the Authorization header
  // (never in the form), and is remembered for this tab only.
  const keyInput = document.getElementById("api-key");
  const KEY_STORE = "classifier-api-key";
  if (keyInput) keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  let chosen = null;
  let previewUrl = null;

  function showError(message) {
    results.replaceChildren(element("p", { className: "error", role: "alert" }, message));
    results.scrollIntoView({ block: "nearest" });
  }

  function element(tag, props, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "role") node.setAttribute("role", value);
      else node[key] = value;
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function humanSize(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  }

  function choose(file) {
    if (!file) return;
    if (file.type && !accepted.includes(file.type)) {
      showError("That is not an image this service reads (" + (file.type || "unknown type") +
        "). Choose a JPEG, PNG, WebP, GIF or BMP image.");
      return;
    }
    if (file.size > maxBytes) {
      showError("This image is " + humanSize(file.size) + "; the limit is " + humanSize(maxBytes) + ".");
      return;
    }
    chosen = file;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    classify();
  }

  async function classify() {
    if (!chosen) {
      showError("Choose an image first.");
      return;
    }
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.elements.csrfmiddlewaretoken.value);
    data.append("image", chosen, chosen.name || "pasted-image.png");
    button.disabled = true;
    results.setAttribute("aria-busy", "true");
    results.replaceChildren(element("p", { className: "meta" }, "Classifying…"));
    const headers = { Accept: "application/json" };
    const key = keyInput ? keyInput.value.trim() : "";
    if (key) {
      headers.Authorization = "Bearer " + key;
      sessionStorage.setItem(KEY_STORE, key);
    }
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: headers,
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => null);
      if (!body) showError("The server answered " + response.status + " without a result. Try again.");
      else if (!body.success) {
        showError(body.error.message);
        if (response.status === 401 && keyInput) {
          sessionStorage.removeItem(KEY_STORE);
          keyInput.focus();
        }
      } else render(body, chosen.name);
    } catch (error) {
      showError("The server could not be reached. Check your connection and try again.");
    } finally {
      button.disabled = false;
      results.setAttribute("aria-busy", "false");
    }
  }

  function render(body, name) {
    const list = element("ol", { className: "scores" });
    for (const score of body.predictions) {
      const item = element("li", { className: "score" });
      item.append(
        element("span", { className: "label" }, score.label.replace(/_/g, " ")),
        Object.assign(element("meter", { min: 0, max: 1, value: score.probability }), { ariaHidden: "true" }),
        element("span", { className: "probability" }, (score.probability * 100).toFixed(1) + "%"),
      );
      list.append(item);
    }
    const model = body.model;
    const parts = [
      element("h2", {}, "Top " + body.predictions.length + " for " + (name || "your image")),
      list,
      element("p", { className: "meta" },
        model.name + ", " + model.weights + " weights, " + model.engine + " " + model.precision +
        ": inference " + Math.round(body.timings_ms.inference) + " ms, total " +
        Math.round(body.timings_ms.total) + " ms."),
    ];
    if (body.stored === false) {
      parts.push(element("p", { className: "note", role: "note" }, body.warning));
    }
    if (!model.meaningful && !document.querySelector("main > .banner")) {
      parts.unshift(element("p", { className: "banner", role: "note" }, model.warning));
    }
    results.replaceChildren(...parts);
    results.scrollIntoView({ block: "nearest" });
  }

  input.addEventListener("change", () => choose(input.files[0]));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    classify();
  });
  dropzone.addEventListener("click", () => input.click());
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData.files || [])[0];
    if (file) {
      event.preventDefault();
      choose(file);
    }
  });
})();
