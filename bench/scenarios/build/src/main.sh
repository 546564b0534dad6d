#!/bin/sh
echo "bench build app"
