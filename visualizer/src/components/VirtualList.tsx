// A fixed-row-height windowed list: only the rows in view (plus a margin) are in the DOM, so a
// tree or timeline of 100,000 rows scrolls like one of 100.

import { useEffect, useLayoutEffect, useRef, useState } from "react";
import type { CSSProperties, KeyboardEvent, ReactNode, UIEvent } from "react";

export function useViewport(ref: React.RefObject<HTMLElement | null>): { width: number; height: number } {
  const [size, setSize] = useState({ width: 0, height: 0 });
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const update = () => setSize({ width: el.clientWidth, height: el.clientHeight });
    update();
    const observer = new ResizeObserver(update);
    observer.observe(el);
    return () => observer.disconnect();
  }, [ref]);
  return size;
}

export function visibleRange(
  scrollTop: number,
  height: number,
  rowHeight: number,
  count: number,
  overscan = 8,
): [number, number] {
  const first = Math.max(0, Math.floor(scrollTop / rowHeight) - overscan);
  const last = Math.min(count, Math.ceil((scrollTop + height) / rowHeight) + overscan);
  return [first, last];
}

interface Props<T> {
  items: readonly T[];
  rowHeight: number;
  renderRow: (item: T, index: number, style: CSSProperties) => ReactNode;
  className?: string;
  /** Scroll so this row is visible (when it changes). */
  scrollToIndex?: number | null;
  onKeyDown?: (event: KeyboardEvent<HTMLDivElement>) => void;
  label?: string;
  testId?: string;
}

export function VirtualList<T>({
  items,
  rowHeight,
  renderRow,
  className,
  scrollToIndex,
  onKeyDown,
  label,
  testId,
}: Props<T>) {
  const ref = useRef<HTMLDivElement>(null);
  const { height } = useViewport(ref);
  const [scrollTop, setScrollTop] = useState(0);

  useEffect(() => {
    const el = ref.current;
    if (!el || scrollToIndex === null || scrollToIndex === undefined || scrollToIndex < 0) return;
    const top = scrollToIndex * rowHeight;
    if (top < el.scrollTop) el.scrollTop = top;
    else if (top + rowHeight > el.scrollTop + el.clientHeight) {
      el.scrollTop = top + rowHeight - el.clientHeight;
    }
  }, [scrollToIndex, rowHeight]);

  const [first, last] = visibleRange(scrollTop, height || 800, rowHeight, items.length);
  const rows: ReactNode[] = [];
  for (let i = first; i < last; i++) {
    rows.push(
      renderRow(items[i], i, {
        position: "absolute",
        top: i * rowHeight,
        left: 0,
        right: 0,
        height: rowHeight,
      }),
    );
  }
  return (
    <div
      ref={ref}
      className={`vlist ${className ?? ""}`}
      onScroll={(e: UIEvent<HTMLDivElement>) => setScrollTop(e.currentTarget.scrollTop)}
      onKeyDown={onKeyDown}
      tabIndex={onKeyDown ? 0 : undefined}
      role={onKeyDown ? "tree" : "list"}
      aria-label={label}
      data-testid={testId}
    >
      <div style={{ position: "relative", height: items.length * rowHeight }}>{rows}</div>
    </div>
  );
}
