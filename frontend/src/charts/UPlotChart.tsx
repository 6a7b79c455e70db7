// uPlot in React: the chart is made once per options (new data is handed to it in place, so a
// refresh does not flicker) and follows its container's width.

import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export function UPlotChart({
  options,
  data,
  label,
}: {
  /** Without width: the container's is used. Keep it stable (useMemo): a new one rebuilds. */
  options: Omit<uPlot.Options, "width">;
  data: uPlot.AlignedData;
  label: string;
}) {
  const container = useRef<HTMLDivElement>(null);
  const chart = useRef<uPlot | null>(null);
  const latestData = useRef(data);
  latestData.current = data;

  useEffect(() => {
    const element = container.current;
    if (element === null) return;
    const made = new uPlot({ ...options, width: Math.max(200, element.clientWidth) }, latestData.current, element);
    chart.current = made;
    const observer = new ResizeObserver(() => made.setSize({ width: Math.max(200, element.clientWidth), height: options.height }));
    observer.observe(element);
    return () => {
      observer.disconnect();
      made.destroy();
      chart.current = null;
    };
  }, [options]);

  useEffect(() => {
    chart.current?.setData(data);
  }, [data]);

  return <div ref={container} className="chart" role="img" aria-label={label} />;
}
