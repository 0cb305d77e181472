// The form generator's validator. rjsf's own (ajv) compiles each schema to
// code with `new Function`, which the console's Content-Security-Policy
// (no `unsafe-eval`) forbids; @cfworker/json-schema interprets schemas
// instead. The form asks it only which `oneOf`/`anyOf` option the data
// matches: whether a document is valid is the server's to say (`/validate`,
// shown on the fields), so the form reports no errors of its own.
import { Validator } from "@cfworker/json-schema";
import type { RJSFSchema, ValidationData, ValidatorType } from "@rjsf/utils";

const compiled = new WeakMap<object, WeakMap<object, Validator>>();

function validatorFor(schema: RJSFSchema, root: RJSFSchema): Validator {
  let byRoot = compiled.get(schema);
  if (!byRoot) {
    byRoot = new WeakMap();
    compiled.set(schema, byRoot);
  }
  let v = byRoot.get(root);
  if (!v) {
    const defs = (root as { $defs?: unknown }).$defs;
    v = new Validator({ ...(schema as object), ...(defs ? { $defs: defs } : {}) } as never, "2020-12", true);
    byRoot.set(root, v);
  }
  return v;
}

export const validator: ValidatorType = {
  validateFormData(): ValidationData<unknown> {
    return { errors: [], errorSchema: {} };
  },
  isValid(schema, formData, rootSchema) {
    try {
      return validatorFor(schema, rootSchema).validate(formData).valid;
    } catch {
      return false;
    }
  },
  rawValidation(schema, formData) {
    try {
      const r = validatorFor(schema, schema).validate(formData);
      return { errors: r.valid ? undefined : (r.errors as never[]) };
    } catch (e) {
      return { validationError: e as Error };
    }
  },
};
