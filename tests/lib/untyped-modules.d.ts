// npm packages without type declarations, typed `any` for tsc as Deno types them.
declare module "node-zookeeper-client";
