// The upload page without reloads: choose images (picker, camera, drop, paste), preview
// them, scale large photos down, classify them all in one request, one card each, and
// show where the model looked on each picture at the flip of one switch.
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
  // The activation maps' colour scale, low to high: COLOUR_STOPS in classifier/explain.py
  // (viridis at five stops, linear between them), so that the overlay drawn here has the
  // colours of the one the server draws for the page without JavaScript (overlay_png).
  const COLOUR_STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  // An overlay's longest side in canvas pixels: a card shows its picture at most 8rem
  // (128 CSS px) high, so this is sharp on screens of up to 2.5 device pixels per px.
  const MAP_SIDE = 320;
  const mapControls = document.getElementById("map-controls");
  const mapSwitch = document.getElementById("map-switch");
  const mapOpacity = document.getElementById("map-opacity");
  const mapOpacityValue = document.getElementById("map-opacity-value");
  // The switch and the opacity are remembered for this tab.
  const MAP_SHOWN_STORE = "classifier-map-shown";
  const MAP_OPACITY_STORE = "classifier-map-opacity";
  // What the last choice sends: [{name, blob, url}], url showing the blob.
  let chosen = [];
  // Each choice gets a number: an answer to an earlier one is not shown over a later one.
  let generation = 0;

  function showError(message) {
    busy(false);
    mapControls.hidden = true;
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
    data.append("explain", "1");
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
      if (result.prediction_id !== null && result.prediction_id !== undefined) {
        text.append(feedbackBlock(result.prediction_id, result.feedback_token));
      }
    }
    const picture = element("div", { className: "picture" });
    picture.append(element("img", { className: "thumb", src: url, alt: "" }));
    const shot = element("div", { className: "shot" });
    shot.append(picture);
    const explanation = result && result.explanation;
    if (explanation) {
      const overlay = element("canvas", { className: "overlay" });
      overlay.setAttribute("aria-hidden", "true");
      drawMap(overlay, explanation.grid, result.width, result.height);
      picture.append(overlay);
      shot.append(element("p", { className: "map-caption" },
        "Where it looked (" + explanation.label.replace(/_/g, " ") + ")"));
    }
    const node = element("article", { className: "card" });
    node.append(shot, text);
    return node;
  }

  // "Right?" under a card: the markup of templates/classifier/feedback.html (two forms,
  // so that Enter in the class field means "Send"). Either form is sent as the page
  // sends it without JavaScript, with the key in a header and JSON back.
  function feedbackBlock(id, token) {
    const block = element("div", { className: "feedback" });
    block.dataset.predictionId = id;
    block.dataset.token = token;
    const question = element("span", { className: "question", id: "question-" + id }, "Right?");
    const yes = element("form", { className: "feedback-yes", method: "post", action: "/feedback" });
    yes.append(submitButton("yes", "Yes", question.id));
    const no = element("details", { className: "feedback-no" });
    const summary = element("summary", {}, "No");
    summary.setAttribute("aria-describedby", question.id);
    const choose = element("form", { method: "post", action: "/feedback" });
    const field = element("input", {
      id: "label-" + id, name: "label", autocomplete: "off", spellcheck: false,
      placeholder: "Type to search the classes",
    });
    field.setAttribute("list", "class-names");
    const buttons = element("span", { className: "feedback-buttons" });
    const none = submitButton("none", "None of these");
    none.className = "secondary";
    buttons.append(submitButton("label", "Send"), none);
    choose.append(element("label", { htmlFor: field.id }, "What is it?"), field, buttons);
    no.append(summary, choose);
    no.addEventListener("toggle", () => {
      if (no.open) {
        loadClassNames();
        field.focus();
      }
    });
    block.append(question, yes, no, element("p", { className: "recorded", role: "status" }));
    return block;
  }

  function submitButton(value, text, describedBy) {
    const node = element("button", { type: "submit", name: "answer", value: value }, text);
    if (describedBy) node.setAttribute("aria-describedby", describedBy);
    return node;
  }

  // The classes to choose from (GET /model), fetched once, the first time "No" opens:
  // most answers are never corrected.
  let classNames = null;
  function loadClassNames() {
    if (classNames || document.querySelector("#class-names option")) return;
    classNames = fetch("/model", { headers: { Accept: "application/json" } })
      .then((response) => response.json())
      .then((body) => {
        let list = document.getElementById("class-names");
        if (!list) {
          list = element("datalist", { id: "class-names" });
          document.body.append(list);
        }
        const names = new Set(body.labels.names.map((name) => name.replace(/_/g, " ")));
        list.replaceChildren(...Array.from(names, (name) => element("option", { value: name })));
      })
      .catch(() => { classNames = null; });
  }

  const RECORDED = {
    confirmed: () => "Recorded: right.",
    corrected: (label) => "Recorded: it is " + label.replace(/_/g, " ") + ".",
    none: () => "Recorded: none of these classes.",
  };

  async function sendFeedback(event) {
    const block = event.target.closest(".feedback");
    if (!block) return;
    event.preventDefault();
    const status = block.querySelector(".recorded");
    const answer = event.submitter ? event.submitter.value : "label";
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.elements.csrfmiddlewaretoken.value);
    data.append("prediction_id", block.dataset.predictionId);
    data.append("token", block.dataset.token);
    data.append("answer", answer);
    if (answer === "label") {
      const label = block.querySelector("input[name=label]").value.trim();
      if (!label) {
        say(status, "Type the right class, or choose “None of these”.", true);
        return;
      }
      data.append("label", label);
    }
    const headers = { Accept: "application/json" };
    const key = keyInput ? keyInput.value.trim() : "";
    if (key) headers.Authorization = "Bearer " + key;
    for (const node of block.querySelectorAll("button")) node.disabled = true;
    let response = null;
    let answerBody = null;
    try {
      response = await fetch(block.querySelector("form").action, {
        method: "POST", body: data, headers: headers, credentials: "same-origin",
      });
      answerBody = await response.json().catch(() => null);
    } catch (error) {
      response = null;
    }
    for (const node of block.querySelectorAll("button")) node.disabled = false;
    if (!response) say(status, "The server could not be reached. Try again.", true);
    else if (!response.ok) {
      say(status, answerBody && answerBody.error ? answerBody.error.message
        : "The server answered " + response.status + ". Try again.", true);
      if (response.status === 401 && keyInput) keyInput.focus();
    } else {
      say(status, RECORDED[answerBody.feedback](answerBody.label || ""), false);
      block.querySelector("details").open = false;
    }
  }

  function say(status, text, isError) {
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  // A value in [0, 1] -> [r, g, b] on the colour scale (explain.colours).
  function colour(value) {
    const position = Math.min(Math.max(value, 0), 1) * (COLOUR_STOPS.length - 1);
    const low = Math.min(Math.floor(position), COLOUR_STOPS.length - 2);
    const fraction = position - low;
    return COLOUR_STOPS[low].map((c, i) => Math.round(c + (COLOUR_STOPS[low + 1][i] - c) * fraction));
  }

  // For each of `size` pixels along an axis of `cells` cells: the two cells it lies
  // between and its weight for the second. As Pillow's BILINEAR upscaling, which
  // explain.overlay_png uses: pixel and cell centres are aligned, and pixels outside the
  // outer cells' centres take the outer cells' values.
  function axis(size, cells) {
    const out = [];
    for (let i = 0; i < size; i++) {
      const at = Math.min(Math.max((i + 0.5) * cells / size - 0.5, 0), cells - 1);
      const low = Math.floor(at);
      out.push([low, Math.min(low + 1, cells - 1), at - low]);
    }
    return out;
  }

  // Draws the map (rows of values in [0, 1], top to bottom) on `canvas` for a picture of
  // width x height: values interpolated bilinearly, then coloured, opaque; the page
  // blends it with the picture through the canvas's CSS opacity.
  function drawMap(canvas, grid, width, height) {
    const scale = Math.min(1, MAP_SIDE / Math.max(width, height));
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const context = canvas.getContext("2d");
    const image = context.createImageData(canvas.width, canvas.height);
    const xs = axis(canvas.width, grid[0].length);
    const ys = axis(canvas.height, grid.length);
    let p = 0;
    for (const [top, bottom, down] of ys) {
      for (const [left, right, across] of xs) {
        const upper = grid[top][left] + (grid[top][right] - grid[top][left]) * across;
        const lower = grid[bottom][left] + (grid[bottom][right] - grid[bottom][left]) * across;
        const [r, g, b] = colour(upper + (lower - upper) * down);
        image.data[p++] = r;
        image.data[p++] = g;
        image.data[p++] = b;
        image.data[p++] = 255;
      }
    }
    context.putImageData(image, 0, 0);
  }

  // The legend's colour bar: 0 at the left, 1 at the right.
  function drawScale(canvas) {
    const context = canvas.getContext("2d");
    for (let x = 0; x < canvas.width; x++) {
      context.fillStyle = "rgb(" + colour(x / (canvas.width - 1)).join(",") + ")";
      context.fillRect(x, 0, 1, canvas.height);
    }
  }

  function showMaps(on) {
    document.body.classList.toggle("maps-shown", on);
    sessionStorage.setItem(MAP_SHOWN_STORE, on ? "1" : "0");
  }

  function setOpacity(percent) {
    // A custom property of the results, which every overlay's opacity follows (style.css).
    results.style.setProperty("--map-opacity", String(percent / 100));
    mapOpacityValue.textContent = percent + "%";
    sessionStorage.setItem(MAP_OPACITY_STORE, String(percent));
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
    mapControls.hidden = !body.results.some((result) => result.explanation);
    results.scrollIntoView({ block: "nearest" });
  }

  drawScale(document.getElementById("map-scale"));
  mapSwitch.checked = sessionStorage.getItem(MAP_SHOWN_STORE) === "1";
  mapOpacity.value = sessionStorage.getItem(MAP_OPACITY_STORE) || mapOpacity.defaultValue;
  showMaps(mapSwitch.checked);
  setOpacity(Number(mapOpacity.value));
  mapSwitch.addEventListener("change", () => showMaps(mapSwitch.checked));
  mapOpacity.addEventListener("input", () => setOpacity(Number(mapOpacity.value)));

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
  // The feedback forms of every card, those the server rendered included.
  results.addEventListener("submit", sendFeedback);
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
