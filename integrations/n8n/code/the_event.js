// Hands the verified event on to the handlers (the look-up of webhook-id replaced the items).
return $('Verify signature').all().map(({ json }, index) => ({ json, pairedItem: index }));
