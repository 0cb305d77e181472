// @rjsf/core's test helper (`getTestRegistry`) imports its ajv validator,
// which the console does not ship (see `validator.ts`); the helper is never
// called, and this stands in so the build resolves the import.
export default {};
