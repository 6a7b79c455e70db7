import { Link } from "react-router-dom";

export function NotFound({ what }: { what: string }) {
  return (
    <section className="not-found" data-testid="not-found">
      <h1>{what} was not found</h1>
      <p>
        <Link to="/runs">Back to the runs</Link>
      </p>
    </section>
  );
}
