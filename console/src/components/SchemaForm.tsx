// A node's properties as a form generated from its JSON Schema (rjsf), with
// the server's problems shown on their fields, and help for the two string
// languages of a workflow: templates (`{{ input.email }}`) and CEL
// expressions (`input.cart_total >= 100.0`).
import { useMemo } from "react";
import Form from "@rjsf/core";
import type { ErrorSchema, RJSFSchema, UiSchema, WidgetProps } from "@rjsf/utils";
import { validator } from "../lib/validator";
import { syntaxHelp } from "../lib/syntax";

function TextWidget(props: WidgetProps) {
  const { id, value, onChange, onBlur, onFocus, disabled, readonly, label, name, rawErrors, placeholder, formContext } = props;
  const field = String(name ?? id.split("_").pop() ?? "");
  // rjsf ids are the path: `root_inputs_subject`.
  const path = id.replace(/^root_/, "").split("_").join(".");
  const text = value === undefined || value === null ? "" : String(value);
  const help = syntaxHelp(path, text);
  const long = text.length > 60 || text.includes("\n") || field === "html" || field === "body" || field === "text";
  const common = {
    id,
    value: text,
    disabled: disabled || readonly,
    placeholder,
    "aria-label": label || field,
    "aria-invalid": rawErrors?.length ? true : undefined,
    list: (formContext as { suggestions?: string } | undefined)?.suggestions,
    onBlur: () => onBlur(id, text),
    onFocus: () => onFocus(id, text),
  };
  return (
    <div>
      {long ? (
        <textarea {...common} rows={4} onChange={(e) => onChange(e.target.value === "" ? undefined : e.target.value)} />
      ) : (
        <input {...common} type="text" onChange={(e) => onChange(e.target.value === "" ? undefined : e.target.value)} />
      )}
      {help && <div className="hint">{help}</div>}
    </div>
  );
}

export function SchemaForm({
  schema,
  value,
  onChange,
  errors,
  suggestionsId,
}: {
  schema: RJSFSchema;
  value: Record<string, unknown>;
  /** `byUser` false: the form filled in its schema's defaults itself. */
  onChange: (v: Record<string, unknown>, byUser: boolean) => void;
  /** The server's problems, as a tree (`formErrors`). */
  errors: ErrorSchema;
  suggestionsId?: string;
}) {
  const ui: UiSchema = useMemo(() => ({ "ui:submitButtonOptions": { norender: true } }), []);
  return (
    <Form
      className="rjsf"
      schema={schema}
      formData={value}
      validator={validator}
      uiSchema={ui}
      widgets={{ TextWidget }}
      formContext={{ suggestions: suggestionsId }}
      extraErrors={errors}
      showErrorList={false}
      noHtml5Validate
      liveValidate={false}
      onChange={(e, id) => onChange((e.formData ?? {}) as Record<string, unknown>, id !== undefined)}
    />
  );
}
