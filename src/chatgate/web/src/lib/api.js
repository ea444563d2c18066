// chatgate's public API, from the page: the key (if any) as a bearer token, the unified error body as an
// ApiError whose message is for people, and every response's headers to whoever listens (rate limits).
import { credentials } from "./auth.js";

export class ApiError extends Error {
  constructor(status, code, message, details = {}, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** The ApiError of a failed response: its unified error body, or its status when it has none. */
export async function errorFrom(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  const error = body && typeof body.error === "object" && body.error ? body.error : {};
  const header = resp.headers.get("retry-after");
  const retryAfter =
    header != null && Number.isFinite(Number(header)) ? Number(header) : (error.details?.retry_after_seconds ?? null);
  const message =
    typeof error.message === "string" && error.message ? error.message : `The gateway answered ${resp.status}.`;
  return new ApiError(resp.status, error.code ?? `HTTP_${resp.status}`, message, error.details ?? {}, retryAfter);
}

export class Api {
  constructor() {
    this.headerListeners = [];
    this.onUnauthorized = null; // a 401 after sign-in: the key was revoked or expired
  }

  /** The response of `method path`; an ApiError for any status but 2xx. */
  async fetch(method, path, { json, body, signal, headers = {} } = {}) {
    // The page's header: with it (and no key), a deployer's JWT cookie may sign the request in (web.jwt_cookie).
    const sent = { "X-Chatgate-Web": "1", ...headers };
    const key = credentials.key();
    if (key) sent.Authorization = `Bearer ${key}`;
    if (json !== undefined) {
      sent["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers: sent, body, signal, credentials: "same-origin", cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "NETWORK", "chatgate could not be reached. Check the connection and try again.");
    }
    for (const listener of this.headerListeners) listener(resp.headers);
    if (!resp.ok) {
      const err = await errorFrom(resp);
      if (resp.status === 401 && this.onUnauthorized) this.onUnauthorized(err);
      throw err;
    }
    return resp;
  }

  async json(method, path, options) {
    return (await this.fetch(method, path, options)).json();
  }

  get(path, options) {
    return this.json("GET", path, options);
  }

  post(path, json, options = {}) {
    return this.json("POST", path, { ...options, json });
  }

  put(path, json, options = {}) {
    return this.json("PUT", path, { ...options, json });
  }

  delete(path, options) {
    return this.json("DELETE", path, options);
  }
}

/** A path segment, escaped (ids come from the server, but never trust them in a URL). */
export const seg = (value) => encodeURIComponent(String(value));
