// The one CBOR codec instance for internal messages, config and metadata. Imported through
// `cbor-x/encode`, which is the pure-JS build: the default entry loads the optional native
// `cbor-extract` addon, whose install script npm does not run here and which breaks decoding in Bun.
import { Encoder } from "cbor-x/encode";

export const cbor = new Encoder({ useRecords: false });
