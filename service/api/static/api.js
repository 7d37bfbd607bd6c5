// The service's HTTP API as the playground uses it: the API key, requests, errors in words.
//
// The key (when the service wants one: <html data-auth="key">) is asked for once and kept
// in this tab's sessionStorage; every request sends it as `Authorization: Bearer <key>`.
// A failed request becomes an ApiError whose message is the service's own `detail`.

const KEY_STORAGE = "cpc-embed.api-key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }

  /** The error as a sentence for the page. */
  describe() {
    if (this.status === 0) return `Could not reach the service: ${this.detail}`;
    return `The service answered ${this.status}: ${this.detail}`;
  }
}

export function needsKey() {
  return document.documentElement.dataset.auth === "key";
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status text
  }
  return response.statusText || "no detail given";
}

/**
 * One API call. `body` may be a FormData (sent as multipart) or any JSON value.
 * `as`: "json" (the default) or "blob". Throws ApiError.
 */
export async function call(method, path, { body, as = "json" } = {}) {
  const headers = {};
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, err.message || String(err));
  }
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
  return as === "blob" ? response.blob() : response.json();
}

export function collectionPath(name, ...rest) {
  return ["/collections", encodeURIComponent(name), ...rest].join("/");
}

/** An item id as a path: each '/'-separated part escaped, the slashes kept. */
export function itemPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}
