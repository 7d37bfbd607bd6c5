// The nearest items of a search, with the originals they keep: thumbnails for images,
// players for audio, the text for text. Originals are fetched with the API key and shown
// from blob: URLs, which are revoked when the list is drawn again.

import { call, collectionPath, itemPath } from "./api.js";

let objectUrls = [];

function el(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function originalView(collection, hit) {
  const blob = await call("GET", collectionPath(collection, "originals", itemPath(hit.id)), {
    as: "blob",
  });
  if (hit.original.startsWith("text/")) return el("p", "snippet", await blob.text());
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  if (hit.original.startsWith("image/")) {
    const img = el("img", "thumb");
    img.alt = `thumbnail of ${hit.id}`;
    img.src = url;
    return img;
  }
  const audio = el("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = url;
  audio.setAttribute("aria-label", `play the start of ${hit.id}`);
  return audio;
}

/**
 * Show `hits` ([{id, score, metadata, original}]) in the list `into`. Originals that cannot
 * be fetched are left out, and `onError` hears why.
 */
export async function showResults(into, collection, hits, onError) {
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  into.replaceChildren();
  if (hits.length === 0) {
    into.appendChild(el("li", "empty", "No items yet: add some to this collection."));
    return;
  }
  const pending = [];
  for (const hit of hits) {
    const item = el("li", "result");
    const media = el("div", "media");
    const about = el("div", "about");
    const title = el("p", "title");
    title.appendChild(el("strong", "result-id", hit.id));
    title.appendChild(el("span", "score", `score ${hit.score.toFixed(3)}`));
    about.appendChild(title);
    if (Object.keys(hit.metadata).length) {
      about.appendChild(el("code", "metadata", JSON.stringify(hit.metadata)));
    }
    item.append(media, about);
    into.appendChild(item);
    if (hit.original) {
      pending.push(
        originalView(collection, hit).then(
          (view) => media.appendChild(view),
          (err) => onError(err),
        ),
      );
    }
  }
  await Promise.all(pending);
}
