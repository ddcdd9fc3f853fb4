// irface's page: plain DOM code, no framework, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const slots = { a: null, b: null };

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;  // never innerHTML: names come from users
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function showResult(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// The photo as the browser shows it, with one box element per face, placed in percent of the
// image size the server decoded (EXIF orientation applied on both sides).
function showPhoto(figure, file, faces, width, height, cls = "") {
  figure.replaceChildren();
  const img = el("img", { alt: file.name });
  img.src = URL.createObjectURL(file);
  figure.appendChild(img);
  for (const face of faces || []) {
    const [x1, y1, x2, y2] = face.box;
    const box = el("div", { class: ("box " + cls).trim() });
    box.style.left = (100 * x1 / width) + "%";
    box.style.top = (100 * y1 / height) + "%";
    box.style.width = (100 * (x2 - x1) / width) + "%";
    box.style.height = (100 * (y2 - y1) / height) + "%";
    figure.appendChild(box);
  }
}

function previewOnly(figure, file) { showPhoto(figure, file, [], 1, 1); }

async function compare() {
  const out = $("verify-result");
  if (!slots.a || !slots.b) {
    showResult(out, slots.a || slots.b ? "Now the other photo." : "");
    return;
  }
  showResult(out, "Comparing\u2026");
  const form = new FormData();
  form.append("a", slots.a);
  form.append("b", slots.b);
  try {
    const r = await api("/v1/verify", { method: "POST", body: form });
    const cls = r.same ? "same" : "different";
    showPhoto($("photo-a"), slots.a, [r.a], r.a.width, r.a.height, cls);
    showPhoto($("photo-b"), slots.b, [r.b], r.b.width, r.b.height, cls);
    showResult(out, (r.same ? "Same person" : "Different people") +
      ` (similarity ${r.similarity.toFixed(3)}, threshold ${r.threshold.toFixed(3)})`);
    out.dataset.decision = cls;
  } catch (e) {
    showResult(out, e.message, true);
  }
}

async function search(file) {
  const out = $("search-result");
  const list = $("matches");
  list.replaceChildren();
  previewOnly($("photo-search"), file);
  showResult(out, "Searching\u2026");
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", "5");
  try {
    const r = await api("/v1/search", { method: "POST", body: form });
    showPhoto($("photo-search"), file, [r.face], r.face.width, r.face.height);
    if (!r.matches.length) {
      showResult(out, "The gallery is empty: enroll someone first.");
      return;
    }
    showResult(out, r.identity === "unknown"
      ? `Unknown: no one in the gallery above the threshold (${r.threshold.toFixed(3)})`
      : `Best match: ${r.identity} (similarity ${r.matches[0].similarity.toFixed(3)})`);
    out.dataset.identity = r.identity;
    for (const m of r.matches) {
      const li = el("li", { class: "match" + (m.accepted ? "" : " below") });
      const img = el("img", { alt: m.identity });
      img.addEventListener("error", () => { img.removeAttribute("src"); });
      if (m.thumbnail) img.src = m.thumbnail;
      li.appendChild(img);
      li.appendChild(el("span", { class: "identity" }, m.identity));
      li.appendChild(el("span", { class: "score" }, m.similarity.toFixed(3)));
      list.appendChild(li);
    }
  } catch (e) {
    showResult(out, e.message, true);
  }
}

function apiKeyHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function refreshGallery() {
  const list = $("gallery-list");
  try {
    const g = await api("/v1/gallery");
    list.replaceChildren();
    for (const name of g.names || []) {
      const li = el("li", {}, name);
      const remove = el("button", { type: "button" }, "remove");
      remove.addEventListener("click", async () => {
        try {
          await api("/v1/gallery/" + encodeURIComponent(name), { method: "DELETE", headers: apiKeyHeaders() });
          refreshGallery();
        } catch (e) { showResult($("enroll-result"), e.message, true); }
      });
      li.appendChild(remove);
      list.appendChild(li);
    }
  } catch (e) {
    list.replaceChildren(el("li", {}, e.message));
  }
}

async function enroll(event) {
  event.preventDefault();
  const out = $("enroll-result");
  const files = $("enroll-files").files;
  const form = new FormData();
  form.append("identity", $("enroll-name").value);
  for (const f of files) form.append("images", f);
  showResult(out, "Enrolling\u2026");
  try {
    const r = await api("/v1/gallery/enroll", { method: "POST", body: form, headers: apiKeyHeaders() });
    let text = `Enrolled ${r.identity}: ${r.added} face${r.added === 1 ? "" : "s"} added`;
    if (r.skipped.length) text += `; skipped ${r.skipped.map((s) => s.reason).join("; ")}`;
    showResult(out, text);
    $("enroll-files").value = "";  // the next person starts from an empty selection
    refreshGallery();
  } catch (e) {
    showResult(out, e.message, true);
  }
}

function setFile(slot, file) {
  if (!file) return;
  if (slot === "search") { search(file); return; }
  slots[slot] = file;
  previewOnly($("photo-" + slot), file);
  compare();
}

function wireDrop(zone) {
  const slot = zone.dataset.slot;
  const input = zone.querySelector("input[type=file]");
  input.addEventListener("change", () => setFile(slot, input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    setFile(slot, e.dataTransfer.files[0]);
  });
}

async function init() {
  document.querySelectorAll(".drop").forEach(wireDrop);
  $("enroll-form").addEventListener("submit", enroll);
  try {
    const h = await api("/v1/health");
    const g = h.gallery ? `gallery ${h.gallery.path || ""}` : "no gallery";
    $("status").textContent = `model ${h.model} \u00b7 threshold ${h.threshold.toFixed(3)} \u00b7 ${g}`;
    $("status").dataset.ready = "1";
  } catch (e) {
    $("status").textContent = "server not reachable: " + e.message;
  }
  refreshGallery();
}

document.addEventListener("DOMContentLoaded", init);
