// The upload page without reloads: choose images (picker, camera, drop, paste), preview
// them, scale large photos down, classify them all in one request, one card each.
// Without this script the form still posts and the server renders the results.
(function () {
  "use strict";
  const form = document.getElementById("classify-form");
  if (!form || !window.fetch || !window.FormData) return;
  const input = document.getElementById("image");
  const camera = document.getElementById("camera");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const results = document.getElementById("results");
  const button = form.querySelector("button[type=submit]");
  const maxBytes = Number(form.dataset.maxBytes);
  const maxImages = Number(form.dataset.maxImages);
  const maxRequestBytes = Number(form.dataset.maxRequestBytes);
  const accepted = form.dataset.accept.split(",");
  // A photo is sent as a JPEG of at most MAX_SIDE px on its longest side: the model sees
  // 224x224 and the history keeps 160 px, while a phone's 3-20 MB photo would take
  // seconds to upload over a mobile network, or exceed the size limit. Smaller images go
  // as they are, unless their file is heavy (a PNG screenshot, a JPEG at quality 100).
  const MAX_SIDE = 1024;
  const SHRINK_BYTES = 1.5 * 1024 * 1024;
  const JPEG_QUALITY = 0.9;
  // With API keys set the page has a key field: the key goes in the Authorization header
  // (never in the form), and is remembered for this tab only.
  const keyInput = document.getElementById("api-key");
  const KEY_STORE = "classifier-api-key";
  if (keyInput) keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  // What the last choice sends: [{name, blob, url}], url showing the blob.
  let chosen = [];
  // Each choice gets a number: an answer to an earlier one is not shown over a later one.
  let generation = 0;

  function showError(message) {
    busy(false);
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

  function busy(on) {
    button.disabled = on;
    results.setAttribute("aria-busy", String(on));
  }

  async function choose(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const mine = ++generation;
    const several = files.length > 1;
    if (files.length > maxImages) {
      showError("You chose " + files.length + " images; the limit is " + maxImages + " at once.");
      return;
    }
    for (const file of files) {
      if (file.type && !file.type.startsWith("image/")) {
        showError(notAnImage(file, several));
        return;
      }
    }
    for (const item of chosen) URL.revokeObjectURL(item.url);
    chosen = [];
    preview.hidden = true;
    busy(true);
    results.replaceChildren(element("p", { className: "meta" },
      "Preparing " + (several ? files.length + " images" : nameOf(files[0])) + "…"));
    const prepared = [];
    try {
      for (const file of files) prepared.push(await prepare(file));
    } finally {
      if (mine === generation) busy(false);
    }
    if (mine !== generation) return;
    const refusal = refuse(files, prepared, several);
    if (refusal) {
      showError(refusal);
      return;
    }
    // The previews show what is sent: upright, and, for a big photo, far cheaper to show
    // than the original (whose decoding would compete with the upload for the CPU).
    chosen = files.map((file, i) => ({
      name: nameOf(file), blob: prepared[i], url: URL.createObjectURL(prepared[i]),
    }));
    if (!several) {
      preview.src = chosen[0].url;
      preview.hidden = false;
    }
    classify();
  }

  function nameOf(file) {
    return file.name || "pasted-image.png";
  }

  function notAnImage(file, several) {
    return (several ? nameOf(file) + " is" : "That is") +
      " not an image this service reads (" + (file.type || "unknown type") +
      "). Choose a JPEG, PNG, WebP, GIF or BMP image.";
  }

  // Why the prepared uploads cannot be sent, in words; "" when they can.
  function refuse(files, prepared, several) {
    let total = 0;
    for (let i = 0; i < files.length; i++) {
      const blob = prepared[i];
      if (blob === null) return notAnImage(files[i], several);
      const what = several ? nameOf(files[i]) : "This image";
      if (blob.size > maxBytes) {
        return what + (blob === files[i] ? " is " : " is still ") + humanSize(blob.size) +
          (blob === files[i] ? "" : " scaled down") + "; the limit is " + humanSize(maxBytes) + ".";
      }
      total += blob.size;
    }
    if (total > maxRequestBytes) {
      return "These images come to " + humanSize(total) + "; the limit is " +
        humanSize(maxRequestBytes) + " at once.";
    }
    return "";
  }

  // What to send for `file`: the file itself when it is small, else (or when the server
  // would not read its type) a JPEG of at most MAX_SIDE px drawn the way it is shown, its
  // EXIF orientation applied. A file this browser cannot decode goes as it is, for the
  // server to say what is wrong with it, unless its type already says: null.
  async function prepare(file) {
    const readable = !file.type || accepted.includes(file.type);
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (error) {
      return readable ? file : null;
    }
    try {
      const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
      if (readable && scale === 1 && file.size <= Math.min(SHRINK_BYTES, maxBytes)) return file;
      return (await jpeg(bitmap, scale)) || file;
    } finally {
      bitmap.close();
    }
  }

  function jpeg(bitmap, scale) {
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    // Transparency on white, as the server composites it (images.ALPHA_BACKGROUND).
    context.fillStyle = "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  async function classify() {
    if (!chosen.length) {
      showError("Choose an image first.");
      return;
    }
    const mine = generation;
    const sent = chosen;
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.elements.csrfmiddlewaretoken.value);
    for (const item of sent) data.append("image", item.blob, item.name);
    busy(true);
    results.replaceChildren(...sent.map((item) => card(item.name, item.url, null)));
    const headers = { Accept: "application/json" };
    const key = keyInput ? keyInput.value.trim() : "";
    if (key) {
      headers.Authorization = "Bearer " + key;
      sessionStorage.setItem(KEY_STORE, key);
    }
    let response = null;
    let body = null;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: headers,
        credentials: "same-origin",
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      response = null;
    }
    if (mine !== generation) return;
    if (!response) showError("The server could not be reached. Check your connection and try again.");
    else if (!body) showError("The server answered " + response.status + " without a result. Try again.");
    else if (!body.success) {
      showError(body.error.message);
      if (response.status === 401 && keyInput) {
        sessionStorage.removeItem(KEY_STORE);
        keyInput.focus();
      }
    } else {
      busy(false);
      render(body, sent);
    }
  }

  // One image's card: its picture, then its top-k, or "Classifying…" until they come.
  function card(name, url, result) {
    const text = element("div");
    if (!result) text.append(element("p", { className: "meta" }, "Classifying " + name + "…"));
    else {
      const list = element("ol", { className: "scores" });
      for (const score of result.predictions) {
        const item = element("li", { className: "score" });
        item.append(
          element("span", { className: "label" }, score.label.replace(/_/g, " ")),
          Object.assign(element("meter", { min: 0, max: 1, value: score.probability }), { ariaHidden: "true" }),
          element("span", { className: "probability" }, (score.probability * 100).toFixed(1) + "%"),
        );
        list.append(item);
      }
      text.append(element("h2", {}, "Top " + result.predictions.length + " for " + name), list);
    }
    const node = element("article", { className: "card" });
    node.append(element("img", { className: "thumb", src: url, alt: "" }), text);
    return node;
  }

  function render(body, sent) {
    const model = body.model;
    const parts = body.results.map((result, i) => card(sent[i].name, sent[i].url, result));
    parts.push(element("p", { className: "meta" },
      model.name + ", " + model.weights + " weights, " + model.engine + " " + model.precision +
      ": inference " + Math.round(body.timings_ms.inference) + " ms, total " +
      Math.round(body.timings_ms.total) + " ms."));
    if (body.stored === false) {
      parts.push(element("p", { className: "note", role: "note" }, body.warning));
    }
    if (!model.meaningful && !document.querySelector("main > .banner")) {
      parts.unshift(element("p", { className: "banner", role: "note" }, model.warning));
    }
    results.replaceChildren(...parts);
    results.scrollIntoView({ block: "nearest" });
  }

  // The inputs are emptied once read, so that choosing the same file (or taking another
  // photo) again is a new choice.
  for (const picker of [input, camera]) {
    picker.addEventListener("change", () => {
      const files = Array.from(picker.files);
      picker.value = "";
      choose(files);
    });
  }
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
    choose(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData.files || []);
    if (files.length) {
      event.preventDefault();
      choose(files);
    }
  });
})();
