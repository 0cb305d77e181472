// The one way the console talks to Sojourn: the public API on its own
// origin, typed from the OpenAPI document (`npm run api-types`).
import createClient, { type Middleware } from "openapi-fetch";
import type { paths, components } from "./schema";

export type Schemas = components["schemas"];

const KEY = "sojourn.apiKey";

/** The API key, kept for this browser tab's session only. */
export const apiKey = {
  get: (): string | null => sessionStorage.getItem(KEY),
  set: (key: string) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error answer, in words: `{"error": {code, message, field, details}}`. */
export class ApiProblem extends Error {
  readonly status: number;
  readonly code: string;
  readonly field?: string;
  readonly details?: unknown;
  constructor(status: number, code: string, message: string, field?: string, details?: unknown) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.details = details;
  }
}

/** Listeners told when the API refuses the key (401): the login page. */
const unauthorized = new Set<() => void>();
export function onUnauthorized(f: () => void): () => void {
  unauthorized.add(f);
  return () => unauthorized.delete(f);
}

const auth: Middleware = {
  onRequest({ request }) {
    const key = apiKey.get();
    if (key) request.headers.set("Authorization", `Bearer ${key}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401) unauthorized.forEach((f) => f());
    return response;
  },
};

export const client = createClient<paths>({ baseUrl: "" });
client.use(auth);

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The data of an answer, or an `ApiProblem` that says what went wrong. */
export async function unwrap<T>(p: Promise<Answer<T>>): Promise<T> {
  let answer: Answer<T>;
  try {
    answer = await p;
  } catch (e) {
    throw new ApiProblem(0, "network", `Sojourn did not answer: ${(e as Error).message}`);
  }
  const { data, error, response } = answer;
  if (response.ok) return data as T;
  const body = (error ?? {}) as { error?: { code?: string; message?: string; field?: string; details?: unknown } };
  const e = body.error;
  throw new ApiProblem(
    response.status,
    e?.code ?? "http_" + response.status,
    e?.message ?? `${response.status} ${response.statusText}`,
    e?.field ?? undefined,
    e?.details,
  );
}

/** For the few answers that are not JSON (the CSV export). */
export async function fetchText(path: string): Promise<string> {
  const headers: Record<string, string> = {};
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  const r = await fetch(path, { headers });
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try {
      message = (await r.json()).error.message ?? message;
    } catch {
      /* not JSON */
    }
    throw new ApiProblem(r.status, "http_" + r.status, message);
  }
  return r.text();
}
