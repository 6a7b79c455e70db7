// Who is logged in (`GET /v1/me`), asked once per page load and shared by whoever needs it:
// the navigation shows the key's id and role, and the pages hide what the key may not open
// (dead letters need a key of every project).

import { useEffect, useState } from "react";
import { api } from "../api";
import type { Me } from "../auth";

let asked: Promise<Me | null> | null = null;

function whoAmI(): Promise<Me | null> {
  // A 401 has already sent the browser to the login page; other errors leave the frame bare.
  asked ??= api.me().catch(() => null);
  return asked;
}

export function useMe(): Me | null {
  const [me, setMe] = useState<Me | null>(null);
  useEffect(() => {
    let current = true;
    void whoAmI().then((found) => {
      if (current) setMe(found);
    });
    return () => {
      current = false;
    };
  }, []);
  return me;
}
