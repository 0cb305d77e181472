import { Component, type ErrorInfo, type ReactNode } from "react";

/** A page that fails to draw says so, and the rest of the console stays. */
export class ErrorBoundary extends Component<{ children: ReactNode; resetKey: string }, { error: Error | null; key: string }> {
  state = { error: null as Error | null, key: this.props.resetKey };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  static getDerivedStateFromProps(props: { resetKey: string }, state: { error: Error | null; key: string }) {
    // Another page: try again.
    return props.resetKey !== state.key ? { error: null, key: props.resetKey } : null;
  }

  componentDidCatch(error: Error, info: ErrorInfo) {
    console.error("the page failed to draw", error, info.componentStack);
  }

  render() {
    if (this.state.error) {
      return (
        <div className="alert" role="alert">
          This page could not be drawn: {this.state.error.message}. Other pages still work; reload to try again.
        </div>
      );
    }
    return this.props.children;
  }
}
