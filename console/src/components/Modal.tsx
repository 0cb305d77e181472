import { useEffect, useLayoutEffect, useRef, type ReactNode } from "react";

/**
 * A dialog over the page: Escape or a click outside closes it, focus moves
 * into it when it opens and goes back where it was when it closes, and Tab
 * stays inside it.
 */
export function Modal({ label, onClose, children }: { label: string; onClose: () => void; children: ReactNode }) {
  const box = useRef<HTMLDivElement>(null);
  // The latest `onClose`, so the page re-rendering does not move focus.
  const close = useRef(onClose);
  useLayoutEffect(() => {
    close.current = onClose;
  });
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    const focusable = () =>
      Array.from(box.current?.querySelectorAll<HTMLElement>("button, input, textarea, select, a[href]") ?? []).filter((e) => !e.hasAttribute("disabled"));
    focusable()[0]?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") {
        e.preventDefault();
        close.current();
      } else if (e.key === "Tab") {
        const all = focusable();
        if (all.length === 0) return;
        const first = all[0];
        const last = all[all.length - 1];
        if (e.shiftKey && document.activeElement === first) {
          e.preventDefault();
          last.focus();
        } else if (!e.shiftKey && document.activeElement === last) {
          e.preventDefault();
          first.focus();
        }
      }
    };
    window.addEventListener("keydown", onKey);
    return () => {
      window.removeEventListener("keydown", onKey);
      before?.focus?.();
    };
  }, []);
  return (
    <div className="modal-back" onClick={onClose}>
      <div className="modal" role="dialog" aria-modal="true" aria-label={label} ref={box} onClick={(e) => e.stopPropagation()}>
        {children}
      </div>
    </div>
  );
}
