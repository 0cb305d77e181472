// Help for the two string languages of a workflow: templates
// (`{{ input.email }}`) and CEL expressions (`input.total >= 100.0`).

/** Field names whose strings are CEL expressions. */
const CEL_FIELDS = new Set(["expression", "condition", "$expr"]);
/** Field names that are CEL outside an action's inputs (where `subject` is an email's). */
const CEL_OUTSIDE_INPUTS = new Set(["key", "subject"]);

/** Whether the field at `path` (`inputs.subject`, `key`) holds CEL. */
export function isCelField(path: string): boolean {
  const parts = path.split(".");
  const name = parts[parts.length - 1];
  return CEL_FIELDS.has(name) || (CEL_OUTSIDE_INPUTS.has(name) && parts[0] !== "inputs");
}

/** What the help line says about a string field's value. */
export function syntaxHelp(path: string, value: string): string | null {
  if (isCelField(path)) {
    return "CEL expression over input, vars, nodes.<id>.output, event, subject (e.g. input.total >= 100.0)";
  }
  if (value.includes("{{")) {
    const open = (value.match(/\{\{/g) ?? []).length;
    const close = (value.match(/\}\}/g) ?? []).length;
    if (open !== close) return "Template: a “{{” is not closed by “}}”";
    return "Template: {{ input.… }}, {{ vars.… }}, {{ nodes.<id>.output.… }}, {{ secrets.NAME }} (resolved at send time)";
  }
  return null;
}
